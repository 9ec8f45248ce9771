use warmpool_extension::backend::connect::{connect, ChannelBinding, Params, Target};
use warmpool_extension::config::Config;
use warmpool_tests::PgServer;

#[tokio::test]
async fn dbg_connect() {
    let pg = PgServer::start();
    let env: Vec<(String, String)> = pg.env();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let config = Config::from_lookup(get).unwrap();
    let tls = warmpool_extension::tls::connector(&config).unwrap();
    let params = Params {
        target: Target::Tcp { host: pg.host().to_owned(), hostaddr: None, port: pg.port() },
        user: pg.user(),
        password: Some(pg.password().as_bytes()),
        database: Some(pg.dbname()),
        options: None,
        application_name: None,
        tls: &tls,
        channel_binding: ChannelBinding::Prefer,
        log_notices: false,
    };
    let r = tokio::time::timeout(std::time::Duration::from_secs(3), connect(&params)).await;
    println!("{:?}", r.map(|r| r.map(|b| b.process_id())));
}

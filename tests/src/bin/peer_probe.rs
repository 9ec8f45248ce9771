//! A function process, possibly running as another user: connects to the extension's socket and
//! pings it. Prints `served`, or why not, and exits 0 only when it was served.
//!
//! Usage: `peer_probe <socket>`

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket] = &args[..] else {
        panic!("usage: peer_probe <socket>");
    };
    let outcome = match warmpool::Client::connect_to(socket).await {
        Ok(client) => client.ping().await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => println!("served"),
        Err(e) => {
            println!("not served: {e}");
            std::process::exit(1);
        }
    }
}

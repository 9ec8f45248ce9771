//! Every common PostgreSQL type crosses the socket in binary and decodes with postgres-types.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use postgres_types::{FromSql, ToSql};
use rust_decimal::Decimal;
use serde_json::json;
use std::str::FromStr;
use uuid::Uuid;
use warmpool::Type;
use warmpool_tests::{Extension, PgServer};

/// Sends `value` as a parameter cast to `pg_type`, and checks it comes back equal, both echoed
/// as a column and stored and read from a table.
async fn round_trip<T>(client: &warmpool::Client, pg_type: &str, value: T)
where
    T: ToSql + Sync + for<'a> FromSql<'a> + PartialEq + std::fmt::Debug,
{
    let sql = format!("SELECT $1::{pg_type}");
    let row = client
        .query_one(sql.as_str(), &[&value])
        .await
        .unwrap_or_else(|e| panic!("{pg_type}: {e}"));
    let back: T = row.get(0);
    assert_eq!(back, value, "{pg_type}");

    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let table = format!(
        "t_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    client
        .batch_execute(&format!("CREATE TABLE {table} (v {pg_type})"))
        .await
        .unwrap();
    client
        .execute(
            format!("INSERT INTO {table} (v) VALUES ($1)").as_str(),
            &[&value],
        )
        .await
        .unwrap();
    let row = client
        .query_one(format!("SELECT v FROM {table}").as_str(), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, T>("v"), value, "{pg_type} via a table");
}

#[tokio::test]
async fn common_types_round_trip() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;

    round_trip(&c, "int2", -12i16).await;
    round_trip(&c, "int4", i32::MAX).await;
    round_trip(&c, "int8", i64::MIN).await;
    round_trip(&c, "float4", 1.5f32).await;
    round_trip(&c, "float8", -2.25e300f64).await;
    round_trip(
        &c,
        "numeric",
        Decimal::from_str("12345678901234567890.123456789").unwrap(),
    )
    .await;
    round_trip(&c, "text", "héllo, wörld".to_string()).await;
    round_trip(&c, "bytea", vec![0u8, 1, 2, 255]).await;
    round_trip(&c, "bool", true).await;
    round_trip(
        &c,
        "timestamptz",
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 30, 5).unwrap(),
    )
    .await;
    round_trip(&c, "date", NaiveDate::from_ymd_opt(1999, 12, 31).unwrap()).await;
    round_trip(&c, "uuid", Uuid::new_v4()).await;
    round_trip(&c, "json", json!({"a": [1, 2, {"b": null}]})).await;
    round_trip(&c, "jsonb", json!({"k": "v", "n": 1.5})).await;
    round_trip(&c, "int4[]", vec![1i32, 2, 3]).await;
    round_trip(&c, "text[]", vec!["a".to_string(), "b c".to_string()]).await;
    round_trip(&c, "int8[]", Vec::<i64>::new()).await;
    round_trip(&c, "int4", None::<i32>).await;
    round_trip(&c, "text", None::<String>).await;
    round_trip(&c, "int4[]", vec![Some(1i32), None, Some(3)]).await;
    round_trip(&c, "timestamptz", None::<DateTime<Utc>>).await;
}

#[tokio::test]
async fn numeric_as_text_and_nulls_in_rows() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    let row = c
        .query_one(
            "SELECT 3.14159::numeric::text AS n, NULL::int4 AS x, ''::text AS e",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>("n"), "3.14159");
    assert_eq!(row.get::<_, Option<i32>>("x"), None);
    assert_eq!(row.get::<_, &str>("e"), "");
    assert_eq!(row.columns()[0].type_(), &Type::TEXT);
    assert_eq!(row.columns()[1].name(), "x");

    // Decoding into the wrong Rust type is an error, not a panic or garbage.
    let err = row.try_get::<_, i64>("n").unwrap_err();
    assert!(err.to_string().contains("cannot convert"), "{err}");
    assert!(
        row.try_get::<_, i32>("x").is_err(),
        "NULL into a non-Option"
    );
    assert!(row.try_get::<_, i32>("missing").is_err());
    assert!(row.try_get::<_, i32>(7).is_err());
}

#[derive(Debug, PartialEq, ToSql, FromSql)]
#[postgres(name = "mood")]
enum Mood {
    #[postgres(name = "happy")]
    Happy,
    #[postgres(name = "sad")]
    Sad,
}

#[tokio::test]
async fn custom_enum_type() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    c.batch_execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
        .await
        .unwrap();
    let row = c
        .query_one("SELECT $1::mood, ARRAY['sad'::mood]", &[&Mood::Happy])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Mood>(0), Mood::Happy);
    assert_eq!(row.get::<_, Vec<Mood>>(1), vec![Mood::Sad]);
}

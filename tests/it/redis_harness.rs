//! The harness itself: a private Redis per test, isolated and restartable.

use crate::helpers::TestRedis;

#[tokio::test]
async fn each_test_gets_its_own_redis_on_a_free_port() {
    // Arrange
    let a = TestRedis::start().await;
    let b = TestRedis::start().await;
    let mut ca = a.connection().await;
    let mut cb = b.connection().await;

    // Act
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("a")
        .query_async(&mut ca)
        .await
        .expect("set");

    // Assert
    assert_ne!(a.url(), b.url());
    assert!(!a.url().ends_with(":6379"));
    let in_b: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut cb)
        .await
        .expect("get");
    assert_eq!(in_b, None);
}

#[tokio::test]
async fn a_restarted_redis_with_aof_keeps_its_data() {
    // Arrange
    let mut redis = TestRedis::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ])
    .await;
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("set");

    // Act
    redis.restart().await;

    // Assert
    let mut conn = redis.connection().await;
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(v.as_deref(), Some("v"));
}

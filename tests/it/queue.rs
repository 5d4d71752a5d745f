//! The job queue against a real redis-server: every promise of the queue issue, one test each.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apalis::prelude::*;
use kyc_worker::{
    queue::{now_ms, Completion, Delivery, Job, JobError, Maintenance, Queue, RedisBackend},
    settings::QueueSettings,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::helpers::{eventually, TestRedis, DEADLINE};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestJob {
    pub n: u64,
    pub action: Action,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Action {
    Ok,
    Sleep {
        ms: u64,
    },
    /// Fails with a handler-chosen delay until attempt `times`, then succeeds.
    FailTimes {
        times: u32,
        after_ms: u64,
    },
    AlwaysFail,
    Fatal,
    /// Asks to run again `times` times ("not yet"), then succeeds.
    Again {
        times: u32,
    },
    Panic,
    /// Sleeps, then asks to run again in an hour with `Ok`.
    SleepThenLater {
        ms: u64,
    },
}

impl Job for TestJob {
    const QUEUE: &'static str = "test";
    const VERSION: u32 = 1;
}

/// Where handlers record what happened, in the test's own Redis.
#[derive(Clone)]
pub struct Probe {
    conn: kyc_worker::queue::RedisConnection,
}

impl Probe {
    async fn record(&self, n: u64, event: &str) {
        let mut c = self.conn.clone();
        let now = now_ms();
        let _: () = redis::pipe()
            .incr(format!("probe:{event}:{n}"), 1)
            .ignore()
            .sadd(format!("probe:{event}"), n)
            .ignore()
            .rpush(format!("probe:{event}:at:{n}"), now)
            .ignore()
            .query_async(&mut c)
            .await
            .expect("probe write");
    }
}

async fn handle(
    job: TestJob,
    delivery: Data<Delivery>,
    probe: Data<Probe>,
) -> Result<Completion<TestJob>, JobError> {
    probe.record(job.n, "start").await;
    let result = match job.action.clone() {
        Action::Ok => Ok(Completion::Done),
        Action::Sleep { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Completion::Done)
        }
        Action::FailTimes { times, after_ms } if delivery.attempt < times => Err(JobError::Retry {
            reason: format!("planned failure {}", delivery.attempt + 1),
            after: Some(Duration::from_millis(after_ms)),
        }),
        Action::FailTimes { .. } => Ok(Completion::Done),
        Action::AlwaysFail => Err(JobError::Retry {
            reason: "always fails".into(),
            after: Some(Duration::from_millis(10)),
        }),
        Action::Fatal => Err(JobError::Fatal("cannot ever work".into())),
        Action::Again { times } if times > 0 => Ok(Completion::RunAgain {
            at: SystemTime::now() + Duration::from_millis(10),
            args: TestJob {
                n: job.n,
                action: Action::Again { times: times - 1 },
            },
        }),
        Action::Again { .. } => Ok(Completion::Done),
        Action::Panic => panic!("handler panicked on purpose"),
        Action::SleepThenLater { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Completion::RunAgain {
                at: SystemTime::now() + Duration::from_secs(3600),
                args: TestJob {
                    n: job.n,
                    action: Action::Ok,
                },
            })
        }
    };
    if matches!(result, Ok(Completion::Done)) {
        probe.record(job.n, "done").await;
    }
    result
}

/// A running worker plus the maintenance loop of its "process".
pub struct TestWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), apalis_core::error::WorkerError>>,
    _maintenance: Maintenance,
}

impl TestWorker {
    pub async fn start(
        redis: &TestRedis,
        settings: QueueSettings,
        consumer: &str,
        concurrency: usize,
    ) -> TestWorker {
        let queue = Queue::connect(&redis.url(), "t", settings)
            .await
            .expect("queue");
        let probe = Probe {
            conn: kyc_worker::queue::connect(&redis.url())
                .await
                .expect("probe"),
        };
        let maintenance =
            Maintenance::spawn(queue.clone(), vec![TestJob::QUEUE], consumer.to_owned());
        let worker = WorkerBuilder::new(consumer)
            .backend(RedisBackend::<TestJob>::new(queue, consumer))
            .concurrency(concurrency)
            .catch_panic()
            .data(probe)
            .build(handle);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run_until(async move {
            let _ = rx.await;
            Ok::<(), apalis_core::error::WorkerError>(())
        }));
        TestWorker {
            stop: Some(tx),
            handle,
            _maintenance: maintenance,
        }
    }

    /// Graceful stop: running jobs finish, unstarted ones go back.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = tokio::time::timeout(DEADLINE, &mut self.handle).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "worker stopped with {result:?}"
        );
    }

    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }
}

async fn producer(redis: &TestRedis, settings: QueueSettings) -> Queue {
    Queue::connect(&redis.url(), "t", settings)
        .await
        .expect("queue")
}

async fn count(redis: &TestRedis, key: &str) -> u64 {
    let mut c = redis.connection().await;
    c.scard(key).await.expect("scard")
}

async fn counter(redis: &TestRedis, key: &str) -> u64 {
    let mut c = redis.connection().await;
    let v: Option<u64> = c.get(key).await.expect("get");
    v.unwrap_or(0)
}

/// Jobs `range` that simply succeed.
fn ok_jobs(range: std::ops::Range<u64>) -> Vec<TestJob> {
    range
        .map(|n| TestJob {
            n,
            action: Action::Ok,
        })
        .collect()
}

fn fast() -> QueueSettings {
    QueueSettings {
        reclaim_after: Duration::from_secs(2),
        retry_min: Duration::from_millis(50),
        fetch_block: Duration::from_millis(500),
        wake_bound: Duration::from_millis(500),
        ..QueueSettings::default()
    }
}

async fn wait_done(redis: &TestRedis, n: u64) {
    eventually(&format!("{n} jobs done"), DEADLINE, || async {
        (count(redis, "probe:done").await >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn each_job_runs_once_and_finished_work_leaves_nothing_behind() {
    // Arrange
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let worker = TestWorker::start(&redis, fast(), "w1", 16).await;

    // Act
    let jobs: Vec<TestJob> = (0..300)
        .map(|n| TestJob {
            n,
            action: Action::Ok,
        })
        .collect();
    queue.push_many(&jobs).await.expect("push");
    wait_done(&redis, 300).await;

    // Assert
    for n in [0, 150, 299] {
        assert_eq!(counter(&redis, &format!("probe:start:{n}")).await, 1);
    }
    let stats = eventually("queue empty", DEADLINE, || async {
        let s = queue.stats("test").await.expect("stats");
        (s.ready == 0 && s.in_flight == 0).then_some(s)
    })
    .await;
    assert_eq!((stats.scheduled, stats.dead), (0, 0));
    let mut c = redis.connection().await;
    let len: u64 = c.xlen("t:queue:test:ready").await.expect("xlen");
    assert_eq!(
        len, 0,
        "finished entries are deleted, not just acknowledged"
    );
    worker.stop().await;
}

#[tokio::test]
async fn delayed_jobs_run_within_a_second_of_their_due_time() {
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let worker = TestWorker::start(&redis, fast(), "w1", 8).await;

    let due = SystemTime::now() + Duration::from_millis(1500);
    let due_ms = due.duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    for n in 0..20 {
        queue
            .push_at(
                &format!("delayed-{n}"),
                &TestJob {
                    n,
                    action: Action::Ok,
                },
                due,
            )
            .await
            .expect("push_at");
    }
    assert_eq!(queue.stats("test").await.expect("stats").scheduled, 20);
    wait_done(&redis, 20).await;

    let mut c = redis.connection().await;
    for n in 0..20 {
        let at: Vec<u64> = c
            .lrange(format!("probe:start:at:{n}"), 0, -1)
            .await
            .expect("lrange");
        let started = at[0];
        assert!(
            started >= due_ms,
            "job {n} ran {} ms early",
            due_ms - started
        );
        assert!(
            started < due_ms + 1000,
            "job {n} ran {} ms late",
            started - due_ms
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn scheduling_the_same_id_again_moves_the_job_instead_of_adding_one() {
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    for _ in 0..3 {
        queue
            .push_at(
                "poll:session-1",
                &TestJob {
                    n: 1,
                    action: Action::Ok,
                },
                later,
            )
            .await
            .expect("push_at");
    }
    assert_eq!(queue.stats("test").await.expect("stats").scheduled, 1);
}

#[tokio::test]
async fn an_undecodable_job_is_dead_lettered_once_and_the_worker_keeps_going() {
    // Arrange: garbage, an unknown schema version and wrong arguments among good jobs.
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let mut c = redis.connection().await;
    let bad = [
        "{not json".to_owned(),
        r#"{"v":99,"id":"future","deadline_ms":0,"args":{"n":1,"action":"Ok"}}"#.to_owned(),
        r#"{"v":1,"id":"wrong-args","deadline_ms":0,"args":{"n":"x"}}"#.to_owned(),
    ];
    for raw in &bad {
        let _: String = c
            .xadd("t:queue:test:ready", "*", &[("j", raw)])
            .await
            .expect("xadd");
    }
    queue.push_many(&ok_jobs(0..10)).await.expect("push");

    // Act
    let worker = TestWorker::start(&redis, fast(), "w1", 4).await;
    wait_done(&redis, 10).await;

    // Assert
    let dead = queue.dead_list("test", 10).await.expect("dead");
    assert_eq!(dead.len(), 3);
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("not a job envelope")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown schema version 99")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("arguments do not match")),
        "{reasons:?}"
    );
    assert!(worker.is_running());
    let s = queue.stats("test").await.expect("stats");
    assert_eq!((s.ready, s.in_flight, s.dead), (0, 0, 3));
    worker.stop().await;
}

#[tokio::test]
async fn retries_wait_as_long_as_the_handler_asks_and_attempts_are_a_setting() {
    let redis = TestRedis::start().await;
    let settings = QueueSettings {
        max_attempts: 3,
        ..fast()
    };
    let queue = producer(&redis, settings.clone()).await;
    let worker = TestWorker::start(&redis, settings, "w1", 4).await;

    queue
        .push(&TestJob {
            n: 1,
            action: Action::FailTimes {
                times: 2,
                after_ms: 400,
            },
        })
        .await
        .expect("push");
    queue
        .push(&TestJob {
            n: 2,
            action: Action::AlwaysFail,
        })
        .await
        .expect("push");
    wait_done(&redis, 1).await;

    let mut c = redis.connection().await;
    let at: Vec<u64> = c.lrange("probe:start:at:1", 0, -1).await.expect("lrange");
    assert_eq!(at.len(), 3, "two failures then success");
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= 400,
            "retry came after {} ms, asked 400",
            pair[1] - pair[0]
        );
    }
    let dead = eventually("always-failing job dead", DEADLINE, || async {
        let d = queue.dead_list("test", 10).await.expect("dead");
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert!(
        dead[0]
            .reason
            .contains("retries exhausted after 3 attempts"),
        "{}",
        dead[0].reason
    );
    assert_eq!(counter(&redis, "probe:start:2").await, 3);
    worker.stop().await;
}

#[tokio::test]
async fn a_fatal_error_or_a_panic_is_handled_without_losing_the_worker() {
    let redis = TestRedis::start().await;
    let settings = QueueSettings {
        max_attempts: 2,
        ..fast()
    };
    let queue = producer(&redis, settings.clone()).await;
    let worker = TestWorker::start(&redis, settings, "w1", 4).await;

    queue
        .push(&TestJob {
            n: 1,
            action: Action::Fatal,
        })
        .await
        .expect("push");
    queue
        .push(&TestJob {
            n: 2,
            action: Action::Panic,
        })
        .await
        .expect("push");
    queue
        .push(&TestJob {
            n: 3,
            action: Action::Ok,
        })
        .await
        .expect("push");

    let dead = eventually("both dead", DEADLINE, || async {
        let d = queue.dead_list("test", 10).await.expect("dead");
        (d.len() == 2).then_some(d)
    })
    .await;
    assert!(dead.iter().any(|d| d.reason == "cannot ever work"));
    assert_eq!(
        counter(&redis, "probe:start:1").await,
        1,
        "fatal is not retried"
    );
    wait_done(&redis, 1).await;
    assert!(worker.is_running());
    worker.stop().await;
}

#[tokio::test]
async fn running_again_later_does_not_use_up_attempts() {
    let redis = TestRedis::start().await;
    let settings = QueueSettings {
        max_attempts: 2,
        ..fast()
    };
    let queue = producer(&redis, settings.clone()).await;
    let worker = TestWorker::start(&redis, settings, "w1", 4).await;

    queue
        .push(&TestJob {
            n: 7,
            action: Action::Again { times: 5 },
        })
        .await
        .expect("push");
    wait_done(&redis, 1).await;

    assert_eq!(counter(&redis, "probe:start:7").await, 6);
    assert_eq!(queue.stats("test").await.expect("stats").dead, 0);
    worker.stop().await;
}

#[tokio::test]
async fn dead_jobs_can_be_listed_replayed_and_purged() {
    let redis = TestRedis::start().await;
    let settings = QueueSettings {
        max_attempts: 1,
        ..fast()
    };
    let queue = producer(&redis, settings.clone()).await;
    let mut c = redis.connection().await;
    let _: String = c
        .xadd("t:queue:test:ready", "*", &[("j", "{garbage")])
        .await
        .expect("xadd");
    queue
        .push(&TestJob {
            n: 5,
            action: Action::Fatal,
        })
        .await
        .expect("push");
    let worker = TestWorker::start(&redis, settings, "w1", 2).await;
    let dead = eventually("two dead", DEADLINE, || async {
        let d = queue.dead_list("test", 10).await.expect("dead");
        (d.len() == 2).then_some(d)
    })
    .await;

    let fatal = dead
        .iter()
        .find(|d| !d.job_id.is_empty())
        .expect("the fatal job");
    assert!(queue
        .dead_replay("test", &fatal.entry_id)
        .await
        .expect("replay"));
    eventually("replayed job ran again", DEADLINE, || async {
        (counter(&redis, "probe:start:5").await == 2).then_some(())
    })
    .await;
    assert!(!queue
        .dead_replay("test", "1-1")
        .await
        .expect("replay missing"));

    assert_eq!(
        queue
            .dead_purge("test", Duration::from_secs(3600))
            .await
            .expect("purge"),
        0
    );
    let purged = queue
        .dead_purge("test", Duration::ZERO)
        .await
        .expect("purge");
    assert!(purged >= 1);
    worker.stop().await;
}

#[tokio::test]
async fn workers_ride_out_a_redis_restart() {
    // Arrange: AOF with fsync always, so a kill loses nothing acknowledged.
    let mut redis = TestRedis::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ])
    .await;
    let queue = producer(&redis, fast()).await;
    let worker = TestWorker::start(&redis, fast(), "w1", 8).await;
    queue.push_many(&ok_jobs(0..50)).await.expect("push");
    wait_done(&redis, 50).await;

    // Act: Redis dies and comes back on the same port.
    redis.restart().await;
    let pushed = eventually("producer reconnects", DEADLINE, || async {
        queue.push_many(&ok_jobs(50..100)).await.ok()
    })
    .await;

    // Assert
    assert_eq!(pushed.len(), 50);
    wait_done(&redis, 100).await;
    assert!(
        worker.is_running(),
        "the worker did not exit on a Redis error"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_long_job_is_never_stolen_from_a_live_worker() {
    let redis = TestRedis::start().await;
    let settings = QueueSettings {
        reclaim_after: Duration::from_millis(600),
        ..fast()
    };
    let queue = producer(&redis, settings.clone()).await;
    let a = TestWorker::start(&redis, settings.clone(), "a", 4).await;
    let b = TestWorker::start(&redis, settings, "b", 4).await;

    queue
        .push(&TestJob {
            n: 1,
            action: Action::Sleep { ms: 3000 },
        })
        .await
        .expect("push");
    wait_done(&redis, 1).await;

    assert_eq!(
        counter(&redis, "probe:start:1").await,
        1,
        "the job ran twice"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_running_jobs_and_gives_unstarted_ones_back() {
    let redis = TestRedis::start().await;
    let settings = QueueSettings {
        fetch_batch: 8,
        ..fast()
    };
    let queue = producer(&redis, settings.clone()).await;
    let worker = TestWorker::start(&redis, settings.clone(), "w1", 1).await;
    queue
        .push_many(
            &(0..10)
                .map(|n| TestJob {
                    n,
                    action: Action::Sleep { ms: 300 },
                })
                .collect::<Vec<_>>(),
        )
        .await
        .expect("push");
    eventually("first job started", DEADLINE, || async {
        (count(&redis, "probe:start").await >= 1).then_some(())
    })
    .await;

    worker.stop().await;

    let started = count(&redis, "probe:start").await;
    assert_eq!(
        count(&redis, "probe:done").await,
        started,
        "a started job was cut off"
    );
    let s = queue.stats("test").await.expect("stats");
    assert_eq!(s.in_flight, 0, "unstarted jobs were given back");
    assert_eq!(s.ready, 10 - started);
    let mut c = redis.connection().await;
    let consumers: redis::streams::StreamInfoConsumersReply = c
        .xinfo_consumers("t:queue:test:ready", "workers")
        .await
        .expect("consumers");
    assert!(
        consumers.consumers.is_empty(),
        "the stopped consumer left the group"
    );

    let next = TestWorker::start(&redis, settings, "w2", 4).await;
    wait_done(&redis, 10).await;
    next.stop().await;
}

#[tokio::test]
async fn a_backlog_of_100000_due_jobs_drains() {
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let due = SystemTime::now();
    // All due at once through the delayed set: the case that wedges apalis-redis.
    let mut c = redis.connection().await;
    for chunk in 0..100u64 {
        let mut pipe = redis::pipe();
        for i in 0..1000u64 {
            let n = chunk * 1000 + i;
            let envelope = kyc_worker::queue::Envelope::new(
                format!("j{n}"),
                &TestJob {
                    n,
                    action: Action::Ok,
                },
                u64::MAX,
            )
            .expect("envelope");
            pipe.hset("t:queue:test:payloads", format!("j{n}"), envelope.encode())
                .ignore();
            pipe.zadd(
                "t:queue:test:delayed",
                format!("j{n}"),
                due.duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64,
            )
            .ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("seed");
    }
    assert_eq!(queue.stats("test").await.expect("stats").scheduled, 100_000);

    let worker = TestWorker::start(&redis, fast(), "w1", 64).await;
    eventually("100,000 jobs done", Duration::from_secs(240), || async {
        (count(&redis, "probe:done").await >= 100_000).then_some(())
    })
    .await;
    assert!(worker.is_running());
    worker.stop().await;
}

/// Entry point of the child worker process used by the SIGKILL test.
#[tokio::test]
#[ignore = "run only as a child process by a_job_held_by_a_killed_process_runs_again"]
async fn child_worker_process() {
    let Ok(url) = std::env::var("KYC_TEST_CHILD_REDIS") else {
        return;
    };
    let queue = Queue::connect(&url, "t", fast()).await.expect("queue");
    let probe = Probe {
        conn: kyc_worker::queue::connect(&url).await.expect("probe"),
    };
    let _maintenance = Maintenance::spawn(queue.clone(), vec![TestJob::QUEUE], "child".into());
    WorkerBuilder::new("child")
        .backend(RedisBackend::<TestJob>::new(queue, "child"))
        .concurrency(4)
        .data(probe)
        .build(handle)
        .run()
        .await
        .expect("child worker");
}

fn spawn_child(redis: &TestRedis) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "queue::child_worker_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("KYC_TEST_CHILD_REDIS", redis.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child worker")
}

#[tokio::test]
async fn a_job_held_by_a_killed_process_runs_again_within_the_reclaim_setting() {
    // Arrange: a child process takes a long job.
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let mut child = spawn_child(&redis);
    queue
        .push(&TestJob {
            n: 1,
            action: Action::Sleep { ms: 1500 },
        })
        .await
        .expect("push");
    eventually("child started the job", DEADLINE, || async {
        (counter(&redis, "probe:start:1").await == 1).then_some(())
    })
    .await;

    // Act: SIGKILL it mid-job; a survivor is running.
    child.kill().expect("kill");
    child.wait().expect("reap");
    let killed_at = std::time::Instant::now();
    let survivor = TestWorker::start(&redis, fast(), "survivor", 4).await;

    // Assert: the job ran again and finished, within reclaim_after (2 s) plus a margin.
    wait_done(&redis, 1).await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(1500) + Duration::from_secs(2),
        "recovery took {took:?}"
    );
    assert_eq!(counter(&redis, "probe:start:1").await, 2);
    let c = redis.connection().await;
    eventually("dead consumer removed", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let info: redis::streams::StreamInfoConsumersReply = c
                .xinfo_consumers("t:queue:test:ready", "workers")
                .await
                .expect("consumers");
            (!info.consumers.iter().any(|x| x.name == "child")).then_some(())
        }
    })
    .await;
    survivor.stop().await;
}

#[tokio::test]
async fn workers_ride_out_a_redis_that_stops_answering_for_two_seconds() {
    let redis = TestRedis::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
    ])
    .await;
    let queue = producer(&redis, fast()).await;
    let worker = TestWorker::start(&redis, fast(), "w1", 8).await;
    queue.push_many(&ok_jobs(0..20)).await.expect("push");
    wait_done(&redis, 20).await;

    // Redis blocks every client for 2 s (a slow fork, a huge script): longer than the 500 ms
    // that stops an apalis-redis worker.
    let mut c = kyc_worker::queue::connect(&redis.url())
        .await
        .expect("connect");
    let _: () = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(2)
        .query_async(&mut c)
        .await
        .expect("debug sleep");
    queue.push_many(&ok_jobs(20..40)).await.expect("push");

    wait_done(&redis, 40).await;
    assert!(worker.is_running());
    worker.stop().await;
}

#[tokio::test]
async fn operators_see_depths_and_work_the_dead_set_from_the_cli() {
    // Arrange: one dead job and two ready ones under the deployment's prefix.
    let redis = TestRedis::start().await;
    let queue = Queue::connect(&redis.url(), "ops", fast())
        .await
        .expect("queue");
    queue
        .push_many(&[
            TestJob {
                n: 1,
                action: Action::Ok,
            },
            TestJob {
                n: 2,
                action: Action::Ok,
            },
        ])
        .await
        .expect("push");
    let mut c = redis.connection().await;
    let _: String = c
        .xadd(
            "ops:queue:test:dead",
            "*",
            &[
                ("j", "{}"),
                ("reason", "bad input"),
                ("id", "job-9"),
                ("attempts", "1"),
            ],
        )
        .await
        .expect("xadd");
    let env = [
        ("KYC__REDIS__URL", redis.url()),
        ("KYC__REDIS__PREFIX", "ops".to_owned()),
    ];
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::helpers::kyc_worker_binary())
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run kyc-worker");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Act + Assert
    let (code, stdout, stderr) = run(&["queue", "stats", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let stats: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(stats["test"]["ready"], 2);
    assert_eq!(stats["test"]["dead"], 1);

    let (_, stdout, _) = run(&["queue", "dead", "list"]);
    assert!(
        stdout.contains("job-9") && stdout.contains("bad input"),
        "{stdout}"
    );

    let dead = queue.dead_list("test", 1).await.expect("dead");
    let (code, stdout, _) = run(&[
        "queue",
        "dead",
        "replay",
        "--queue",
        "test",
        &dead[0].entry_id,
    ]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("replayed 1"), "{stdout}");
    assert_eq!(queue.stats("test").await.expect("stats").ready, 3);

    let (code, _, stderr) = run(&["queue", "dead", "replay", "--queue", "test", "1-1"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no dead job 1-1"), "{stderr}");

    // Two more dead jobs: `replay --all` puts both back; `purge` removes only old ones.
    for id in ["job-10", "job-11"] {
        let _: String = c
            .xadd(
                "ops:queue:test:dead",
                "*",
                &[
                    ("j", "{}"),
                    ("reason", "bad input"),
                    ("id", id),
                    ("attempts", "1"),
                ],
            )
            .await
            .expect("xadd");
    }
    let (code, stdout, stderr) = run(&["queue", "dead", "replay", "--queue", "test", "--all"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("replayed 2"), "{stdout}");
    assert_eq!(queue.stats("test").await.expect("stats").dead, 0);
    let _: String = c
        .xadd(
            "ops:queue:test:dead",
            "*",
            &[
                ("j", "{}"),
                ("reason", "bad input"),
                ("id", "job-12"),
                ("attempts", "1"),
            ],
        )
        .await
        .expect("xadd");
    let (code, stdout, _) = run(&["queue", "dead", "purge", "--older-than", "1h"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("purged 0"), "{stdout}");
    assert_eq!(queue.stats("test").await.expect("stats").dead, 1);
    let (code, stdout, _) = run(&[
        "queue",
        "dead",
        "purge",
        "--queue",
        "test",
        "--older-than",
        "0s",
    ]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("purged 1"), "{stdout}");
    assert_eq!(queue.stats("test").await.expect("stats").dead, 0);
    let (_, stdout, _) = run(&["queue", "dead", "list"]);
    assert!(stdout.contains("the dead set is empty"), "{stdout}");
}

#[tokio::test]
async fn a_run_now_scheduled_while_the_job_runs_is_not_overwritten_by_its_later_run_again() {
    // Arrange: the job is running and will ask to run again in an hour.
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let worker = TestWorker::start(&redis, fast(), "w1", 4).await;
    queue
        .push_with_id(
            "slot-1",
            &TestJob {
                n: 1,
                action: Action::SleepThenLater { ms: 500 },
            },
        )
        .await
        .expect("push");
    eventually("the job started", DEADLINE, || async {
        (counter(&redis, "probe:start:1").await == 1).then_some(())
    })
    .await;

    // Act: meanwhile something (a webhook) asks for the same slot now.
    queue
        .push_at(
            "slot-1",
            &TestJob {
                n: 1,
                action: Action::Ok,
            },
            SystemTime::now(),
        )
        .await
        .expect("push_at");

    // Assert: the run asked for now happens now, not in an hour.
    eventually("the job ran again", Duration::from_secs(5), || async {
        (counter(&redis, "probe:start:1").await == 2).then_some(())
    })
    .await;
    wait_done(&redis, 1).await;
    assert_eq!(queue.stats("test").await.expect("stats").dead, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_job_scheduled_far_ahead_gets_its_retry_deadline_from_its_due_time() {
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let due = SystemTime::now() + Duration::from_secs(48 * 3600);
    queue
        .push_at(
            "far",
            &TestJob {
                n: 1,
                action: Action::Ok,
            },
            due,
        )
        .await
        .expect("push_at");

    let mut c = redis.connection().await;
    let raw: String = c
        .hget("t:queue:test:payloads", "far")
        .await
        .expect("payload");
    let envelope: serde_json::Value = serde_json::from_str(&raw).expect("json");
    let due_ms = due.duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    assert_eq!(
        envelope["deadline_ms"].as_u64(),
        Some(due_ms + 24 * 3600 * 1000)
    );
}

/// When job `n` first started, Unix ms (from the probe).
async fn first_start_ms(redis: &TestRedis, n: u64) -> Option<u64> {
    let mut c = redis.connection().await;
    let at: Vec<u64> = c
        .lrange(format!("probe:start:at:{n}"), 0, 0)
        .await
        .expect("lrange");
    at.first().copied()
}

/// Waits until `n` promoters listen for the test queue's wake-ups.
async fn promoters_listening(redis: &TestRedis, n: u64) {
    let c = redis.connection().await;
    eventually(&format!("{n} promoters subscribed"), DEADLINE, || {
        let mut c = c.clone();
        async move {
            let subscribers: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("t:queue:test:wake")
                .query_async(&mut c)
                .await
                .expect("numsub");
            subscribers
                .first()
                .is_some_and(|(_, m)| *m == n)
                .then_some(())
        }
    })
    .await;
}

/// The bound a woken promoter must meet: well under the old 200 ms tick, with room for a
/// debug build on a shared machine.
const ON_TIME: u64 = 150;

#[tokio::test]
async fn a_job_delayed_50_ms_starts_within_the_bound() {
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let worker = TestWorker::start(&redis, fast(), "w1", 4).await;
    promoters_listening(&redis, 1).await;

    for n in 0..5 {
        let due = SystemTime::now() + Duration::from_millis(50);
        let due_ms = due.duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
        queue
            .push_at(
                &format!("soon-{n}"),
                &TestJob {
                    n,
                    action: Action::Ok,
                },
                due,
            )
            .await
            .expect("push_at");
        let started = eventually("the delayed job started", DEADLINE, || async {
            first_start_ms(&redis, n).await
        })
        .await;
        assert!(
            started >= due_ms,
            "job {n} ran {} ms early",
            due_ms - started
        );
        assert!(
            started <= due_ms + ON_TIME,
            "job {n} ran {} ms late",
            started - due_ms
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn an_earlier_insert_pre_empts_a_later_sleep() {
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let worker = TestWorker::start(&redis, fast(), "w1", 4).await;
    promoters_listening(&redis, 1).await;

    // The promoter now sleeps until this job, an hour away.
    queue
        .push_at(
            "later",
            &TestJob {
                n: 1,
                action: Action::Ok,
            },
            SystemTime::now() + Duration::from_secs(3600),
        )
        .await
        .expect("push_at later");
    let due = SystemTime::now() + Duration::from_millis(100);
    let due_ms = due.duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    queue
        .push_at(
            "sooner",
            &TestJob {
                n: 2,
                action: Action::Ok,
            },
            due,
        )
        .await
        .expect("push_at sooner");

    let started = eventually("the earlier job started", DEADLINE, || async {
        first_start_ms(&redis, 2).await
    })
    .await;
    assert!(started >= due_ms);
    assert!(
        started <= due_ms + ON_TIME,
        "the earlier job ran {} ms late: the promoter kept sleeping",
        started - due_ms
    );
    assert_eq!(first_start_ms(&redis, 1).await, None, "the later job waits");
    assert_eq!(queue.stats("test").await.expect("stats").scheduled, 1);
    worker.stop().await;
}

/// Entry point of the child promoter process used by the killed-promoter test: maintenance
/// only, no worker.
#[tokio::test]
#[ignore = "run only as a child process by a_killed_promoters_jobs_are_still_promoted"]
async fn child_promoter_process() {
    let Ok(url) = std::env::var("KYC_TEST_CHILD_REDIS") else {
        return;
    };
    let queue = Queue::connect(&url, "t", fast()).await.expect("queue");
    let _maintenance = Maintenance::spawn(queue, vec![TestJob::QUEUE], "promoter".into());
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn a_killed_promoters_jobs_are_still_promoted() {
    // Arrange: a promoter process that hears of the jobs first, and a second process.
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "queue::child_promoter_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("KYC_TEST_CHILD_REDIS", redis.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child promoter");
    promoters_listening(&redis, 1).await;
    let worker = TestWorker::start(&redis, fast(), "survivor", 8).await;
    promoters_listening(&redis, 2).await;
    let due = SystemTime::now() + Duration::from_millis(600);
    let due_ms = due.duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    let jobs: Vec<(String, TestJob, SystemTime)> = (0..50)
        .map(|n| {
            (
                format!("orphan-{n}"),
                TestJob {
                    n,
                    action: Action::Ok,
                },
                due,
            )
        })
        .collect();
    queue.push_at_many(&jobs).await.expect("push_at_many");

    // Act: the child dies before the jobs are due.
    child.kill().expect("kill");
    child.wait().expect("reap");

    // Assert: every job ran exactly once, on time.
    wait_done(&redis, 50).await;
    for n in 0..50 {
        let started = first_start_ms(&redis, n).await.expect("started");
        assert!(started >= due_ms);
        assert!(
            started <= due_ms + 1000,
            "job {n} ran {} ms late",
            started - due_ms
        );
        assert_eq!(counter(&redis, &format!("probe:start:{n}")).await, 1);
    }
    let mut c = redis.connection().await;
    let scheduled: u64 = c.zcard("t:queue:test:delayed").await.expect("zcard");
    assert_eq!(scheduled, 0);
    worker.stop().await;
}

/// Calls per command on the test's Redis since the last `CONFIG RESETSTAT`.
async fn command_calls(redis: &TestRedis) -> std::collections::HashMap<String, u64> {
    let mut c = redis.connection().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .expect("info");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[tokio::test]
async fn an_idle_worker_and_promoter_send_only_their_liveness_traffic() {
    let redis = TestRedis::start().await;
    let worker = TestWorker::start(&redis, fast(), "w1", 4).await;
    promoters_listening(&redis, 1).await;
    let mut c = redis.connection().await;
    // Scheduled an hour ahead: the promoter has a timer, and must not poll for it.
    producer(&redis, fast())
        .await
        .push_at(
            "later",
            &TestJob {
                n: 1,
                action: Action::Ok,
            },
            SystemTime::now() + Duration::from_secs(3600),
        )
        .await
        .expect("push_at");
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut c)
        .await
        .expect("resetstat");

    // A measuring window, not a synchronisation: what an idle process sends in 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = command_calls(&redis).await;
    let total: u64 = calls
        .iter()
        .filter(|(name, _)| !name.starts_with("info") && !name.starts_with("config"))
        .map(|(_, n)| n)
        .sum();
    // With the test's short periods: a ping per 250 ms, a read per 500 ms, a reclaim turn
    // per second (a handful of commands), nothing for the scheduled job.
    assert!(
        calls.get("evalsha").copied().unwrap_or(0) <= 2,
        "the promoter polls: {calls:?}"
    );
    assert!(total <= 40, "{total} commands in 2 s while idle: {calls:?}");
    worker.stop().await;
}

/// A job of the queue `lane-<I>`: several queues served by one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneJob<const I: usize> {
    pub n: u64,
    pub sleep_ms: u64,
}

macro_rules! lane_queues {
    ($($i:literal => $queue:literal),*) => {
        $(impl Job for LaneJob<$i> {
            const QUEUE: &'static str = $queue;
            const VERSION: u32 = 1;
        })*
    };
}
lane_queues!(0 => "lane-0", 1 => "lane-1", 2 => "lane-2", 3 => "lane-3");

async fn lane_handle<const I: usize>(
    job: LaneJob<I>,
    probe: Data<Probe>,
) -> Result<Completion<LaneJob<I>>, JobError>
where
    LaneJob<I>: Job,
{
    tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    probe.record(job.n, &format!("lane{I}-done")).await;
    Ok(Completion::Done)
}

/// One "process": a worker for each of the queues `lane-0` .. `lane-<n-1>`, all reading as
/// the same consumer, without maintenance (its fleet-wide pass is not per process).
struct LaneProcess {
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<Result<(), apalis_core::error::WorkerError>>>,
}

impl LaneProcess {
    /// Workers for the first `concurrency.len()` lanes, with these concurrencies.
    async fn start(redis: &TestRedis, consumer: &str, concurrency: &[usize]) -> LaneProcess {
        let queue = producer(redis, fast()).await;
        let probe = Probe {
            conn: kyc_worker::queue::connect(&redis.url())
                .await
                .expect("probe"),
        };
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for (lane, &n) in concurrency.iter().enumerate() {
            let (q, p, s) = (&queue, probe.clone(), stop.subscribe());
            workers.push(match lane {
                0 => spawn_lane::<0>(q, consumer, n, p, s),
                1 => spawn_lane::<1>(q, consumer, n, p, s),
                2 => spawn_lane::<2>(q, consumer, n, p, s),
                _ => spawn_lane::<3>(q, consumer, n, p, s),
            });
        }
        LaneProcess { stop, workers }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        for worker in self.workers {
            let result = tokio::time::timeout(DEADLINE, worker).await;
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "worker stopped with {result:?}"
            );
        }
    }
}

fn spawn_lane<const I: usize>(
    queue: &Queue,
    consumer: &str,
    concurrency: usize,
    probe: Probe,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), apalis_core::error::WorkerError>>
where
    LaneJob<I>: Job,
{
    let worker = WorkerBuilder::new(format!("{consumer}-lane-{I}").as_str())
        .backend(RedisBackend::<LaneJob<I>>::new(queue.clone(), consumer))
        .concurrency(concurrency)
        .data(probe)
        .build(lane_handle::<I>);
    tokio::spawn(worker.run_until(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
        Ok::<(), apalis_core::error::WorkerError>(())
    }))
}

/// Adds `n` jobs to lane `I`, numbered from 0, each sleeping `sleep_ms`.
async fn push_lane<const I: usize>(queue: &Queue, n: u64, sleep_ms: u64)
where
    LaneJob<I>: Job,
{
    let jobs: Vec<LaneJob<I>> = (0..n).map(|n| LaneJob { n, sleep_ms }).collect();
    queue.push_many(&jobs).await.expect("push lane jobs");
}

/// Connections of the test's Redis whose last command is `cmd` (a blocked reader's is
/// `xreadgroup`).
async fn connections_in(redis: &TestRedis, cmd: &str) -> usize {
    let mut c = redis.connection().await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .expect("client list");
    let needle = format!(" cmd={cmd} ");
    clients.lines().filter(|l| l.contains(&needle)).count()
}

#[tokio::test]
async fn one_process_consumes_several_queues_through_one_blocking_read() {
    // Arrange: one process serving four queues.
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let process = LaneProcess::start(&redis, "p1", &[4, 4, 4, 4]).await;

    // Act: jobs on every queue.
    push_lane::<0>(&queue, 25, 0).await;
    push_lane::<1>(&queue, 25, 0).await;
    push_lane::<2>(&queue, 25, 0).await;
    push_lane::<3>(&queue, 25, 0).await;

    // Assert: all consumed, by the one consumer, through one blocked connection.
    for lane in 0..4 {
        let key = format!("probe:lane{lane}-done");
        let (redis, key) = (&redis, key.as_str());
        eventually(key, DEADLINE, || async move {
            (count(redis, key).await >= 25).then_some(())
        })
        .await;
    }
    let mut c = redis.connection().await;
    for lane in 0..4 {
        let info: redis::streams::StreamInfoConsumersReply = c
            .xinfo_consumers(format!("t:queue:lane-{lane}:ready"), "workers")
            .await
            .expect("xinfo consumers");
        let names: Vec<&str> = info.consumers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["p1"], "lane {lane}");
    }
    eventually("one blocked read", DEADLINE, || async {
        (connections_in(&redis, "xreadgroup").await == 1).then_some(())
    })
    .await;
    process.stop().await;
}

/// Blocking reads and every other command of an idle process serving `queues` queues,
/// over a window of `window`, after its start-up checks are done.
async fn idle_calls(queues: usize, window: Duration) -> (u64, u64) {
    let redis = TestRedis::start().await;
    let process = LaneProcess::start(&redis, "p1", &vec![2; queues]).await;
    // Start-up: each worker looks once for deliveries it never received (XPENDING).
    eventually("start-up checks done", DEADLINE, || async {
        (command_calls(&redis)
            .await
            .get("xpending")
            .copied()
            .unwrap_or(0)
            >= queues as u64)
            .then_some(())
    })
    .await;
    let mut c = redis.connection().await;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut c)
        .await
        .expect("resetstat");
    // A measuring window, not a synchronisation.
    tokio::time::sleep(window).await;
    let calls = command_calls(&redis).await;
    process.stop().await;
    let total = calls
        .iter()
        .filter(|(name, _)| !name.starts_with("info") && !name.starts_with("config"))
        .map(|(_, n)| n)
        .sum();
    (calls.get("xreadgroup").copied().unwrap_or(0), total)
}

#[tokio::test]
async fn idle_traffic_does_not_grow_with_the_number_of_queues() {
    let window = Duration::from_secs(3);
    let (reads_one, total_one) = idle_calls(1, window).await;
    let (reads_four, total_four) = idle_calls(4, window).await;
    eprintln!("idle in {window:?}: 1 queue {reads_one} reads, {total_one} commands; 4 queues {reads_four} reads, {total_four} commands");
    // One blocking read per `queue.fetch_block` (500 ms here), whatever the number of queues.
    let most = (window.as_millis() / fast().fetch_block.as_millis()) as u64 + 1;
    assert!(
        reads_one <= most,
        "1 queue: {reads_one} reads in {window:?}"
    );
    assert!(
        reads_four <= most,
        "4 queues: {reads_four} reads in {window:?}"
    );
    assert!(
        reads_four <= reads_one + 1,
        "reads: 1 queue {reads_one}, 4 queues {reads_four}"
    );
    assert!(
        total_four <= total_one + 1,
        "commands: 1 queue {total_one}, 4 queues {total_four}"
    );
}

#[tokio::test]
async fn a_full_worker_does_not_hold_up_the_other_queues() {
    // Arrange: a slow queue with one slot and a backlog far beyond its batch, and a quick one.
    let redis = TestRedis::start().await;
    let queue = producer(&redis, fast()).await;
    let process = LaneProcess::start(&redis, "p1", &[1, 4]).await;
    push_lane::<0>(&queue, 100, 200).await;

    // Act
    push_lane::<1>(&queue, 40, 0).await;

    // Assert: the quick queue is done while the slow one is still at its backlog, and the
    // slow one was never handed more than it had room for.
    eventually("the quick queue done", DEADLINE, || async {
        (count(&redis, "probe:lane1-done").await >= 40).then_some(())
    })
    .await;
    assert!(count(&redis, "probe:lane0-done").await < 100);
    let mut c = redis.connection().await;
    let pending: redis::streams::StreamPendingReply = c
        .xpending("t:queue:lane-0:ready", "workers")
        .await
        .expect("xpending");
    let held = match pending {
        redis::streams::StreamPendingReply::Data(d) => d.count,
        _ => 0,
    };
    // Channel (fetch_batch) + the one running.
    assert!(
        held <= fast().fetch_batch + 1,
        "{held} held by a worker with one slot"
    );
    process.stop().await;
}

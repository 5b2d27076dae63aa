//! The coordination recipes with real processes: a lock held by a `corekvctl lock` process
//! that is paused (SIGSTOP) passes to a waiter only once its lease expires, with a larger
//! fencing token; mutual exclusion among 5 contending clients holds across 20 SIGKILLs of
//! the lock shard's leader (checked from the holders' own records); an election's leader is
//! followed by observers and replaced when it resigns.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use corekv_client::recipes::{Election, Mutex, Session};
use futures_util::StreamExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Starts `corekvctl lock NAME --ttl TTL -- CMD...` with its output piped.
fn lock_process(cluster: &TestCluster, name: &str, ttl: &str, command: &[&str]) -> Child {
    Command::new(common::corekvctl_bin())
        .arg("--registry")
        .arg(cluster.registry_of(1))
        .args(["lock", name, "--ttl", ttl, "--"])
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corekvctl starts")
}

/// The token `corekvctl lock` printed on its first line (`KEY token=N`), and when.
fn read_token(child: &mut Child) -> (u64, Instant) {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line).expect("a line");
    let at = Instant::now();
    let token = line.trim().rsplit("token=").next().and_then(|t| t.parse().ok());
    (token.unwrap_or_else(|| panic!("no token in {line:?}")), at)
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: signalling a child process this test started and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

// Shows: `corekvctl lock job --ttl 3s -- sleep 600` takes the lock and prints its token;
// once that corekvctl is paused (SIGSTOP: its keep-alives stop, its command runs on), a
// second `corekvctl lock job` waits, and takes the lock only after the first's lease ran
// out — no sooner than the pause plus the time to live less one keep-alive period — with a
// larger token, runs its command with the token in its environment, and exits with the
// command's status.
#[test]
fn a_paused_holder_keeps_the_lock_until_its_lease_expires() {
    let cluster = TestCluster::start(3, 2);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let ttl = Duration::from_secs(3);
    let mut first = lock_process(&cluster, "job", "3s", &["sleep", "600"]);
    let (first_token, _) = read_token(&mut first);
    // Let a keep-alive or two go through, then pause the holder.
    std::thread::sleep(Duration::from_millis(1_500));
    signal(&first, libc::SIGSTOP);
    let paused = Instant::now();
    let mut second = lock_process(
        &cluster,
        "job",
        "3s",
        &["sh", "-c", "test \"$COREKV_LOCK_TOKEN\" -gt 0 && exit 7"],
    );
    let (second_token, acquired) = read_token(&mut second);
    let waited = acquired - paused;
    println!("the waiter took the lock {waited:?} after the holder was paused");
    // The holder kept alive at least every third of the time to live before the pause.
    assert!(waited >= ttl - ttl / 3 - Duration::from_millis(100), "taken after {waited:?}");
    assert!(waited <= ttl + Duration::from_secs(2), "taken after {waited:?}");
    assert!(second_token > first_token, "{second_token} after {first_token}");
    let status = second.wait().unwrap();
    assert_eq!(status.code(), Some(7), "the command's exit status, run with the token");
    signal(&first, libc::SIGCONT);
    // The first finds its session lost once it runs again: it kills its command, exits 3.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the paused holder did not notice");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut err);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("session lost"), "{err}");
}

/// One holding of the lock, as its holder recorded it.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    start: Instant,
    /// When it released it, or when its lease could have run out, whichever is first.
    end: Instant,
}

// Shows: 5 clients, each with its own session (time to live 5 s), take and release one lock
// in a loop while the lock's shard's leader is SIGKILLed (then restarted) 20 times; by the holders' own records — each holding from the moment `lock` returned to
// the release, cut at `Session::valid_until` — no two holdings overlap, each has its own
// token, and tokens grow with time.
#[test]
fn mutual_exclusion_holds_across_leader_kills() {
    let mut cluster = TestCluster::start(3, 2);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let rt = runtime();
    let shard = cluster.client().shard_of(b"{lock/m}/").get();
    let stop = Arc::new(AtomicBool::new(false));
    let records: Arc<StdMutex<Vec<Held>>> = Arc::default();
    let mut contenders = Vec::new();
    for c in 0..5u64 {
        let client = cluster.client();
        let (stop, records) = (stop.clone(), records.clone());
        contenders.push(rt.spawn(async move {
            let mut session = Session::new(&client, Duration::from_secs(5));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if session.is_lost().is_some() {
                    session = Session::new(&client, Duration::from_secs(5));
                }
                let mutex = Mutex::new(&session, "m");
                let guard = match mutex.lock().await {
                    Ok(guard) => guard,
                    Err(_) => continue,
                };
                let start = Instant::now();
                n += 1;
                tokio::time::sleep(Duration::from_millis(10 + (c * 7 + n * 13) % 60)).await;
                let released = Instant::now();
                let valid = guard.valid_until().await;
                let end = valid.map_or(start, |v| v.min(released));
                records.lock().unwrap().push(Held { token: guard.token(), start, end });
                // Retry the release until it is known done (it is conditional: safe).
                loop {
                    match guard.unlock().await {
                        Ok(()) => break,
                        Err(error) if error.is_unavailable() => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        // Lost with the session: nothing left to release.
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(700));
        let leader = cluster.leader_of(shard);
        cluster.kill(leader);
        cluster.leader_of(shard);
        cluster.restart(leader);
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for contender in contenders {
        rt.block_on(contender).unwrap();
    }
    let mut held = records.lock().unwrap().clone();
    held.sort_by_key(|h| (h.token, h.start));
    println!("{} holdings, tokens {}..={}", held.len(), held[0].token, held[held.len() - 1].token);
    assert!(held.len() >= 20, "only {} holdings", held.len());
    for pair in held.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(a.token < b.token, "token {} given twice", a.token);
        assert!(
            a.end <= b.start,
            "token {} held until {:?} after token {} began",
            a.token,
            a.end - b.start,
            b.token
        );
    }
}

// Shows: an observer sees no leader, then the first candidate's proposal; a second candidate
// waits while the first leads; the first's proclaimed value reaches the observer; when the
// first resigns the second leads and the observer sees its proposal; `corekvctl elect NAME`
// prints the leader's value.
#[test]
fn an_election_follows_campaigns_proclaims_and_resignations() {
    let cluster = TestCluster::start(1, 2);
    cluster.wait_for_leaders(Duration::from_secs(15));
    let rt = runtime();
    let client = cluster.client();
    let (a, b) = (
        Session::new(&client, Duration::from_secs(10)),
        Session::new(&client, Duration::from_secs(10)),
    );
    let (ea, eb) = (Election::new(&a, "sched"), Election::new(&b, "sched"));
    let mut observed = Box::pin(Election::new(&a, "sched").observe());
    let mut next = || {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), observed.next()).await })
            .expect("observed in time")
            .expect("the observation runs")
            .unwrap()
            .map(|l| l.value)
    };
    assert_eq!(next(), None);
    let leader = rt.block_on(ea.campaign(b"host-a")).unwrap();
    assert_eq!(next(), Some(b"host-a".to_vec()));
    let second = {
        let eb = eb.clone();
        rt.spawn(async move { eb.campaign(b"host-b").await })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!second.is_finished(), "the second waits while the first leads");
    rt.block_on(ea.proclaim(b"host-a2")).unwrap();
    assert_eq!(next(), Some(b"host-a2".to_vec()));
    let mut observer = Command::new(common::corekvctl_bin())
        .arg("--registry")
        .arg(cluster.registry_of(1))
        .args(["elect", "sched"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(observer.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "host-a2", "corekvctl elect prints the leader's value");
    let _ = observer.kill();
    let _ = observer.wait();
    rt.block_on(ea.resign()).unwrap();
    let won = rt.block_on(second).unwrap().unwrap();
    assert!(won.revision > leader.revision, "the fencing token grows");
    assert_eq!(next(), Some(b"host-b".to_vec()));
    assert!(rt.block_on(ea.proclaim(b"x")).is_err(), "a resigned candidate cannot proclaim");
    assert!(matches!(rt.block_on(eb.leader()), Ok(Some(l)) if l.value == b"host-b"));
}

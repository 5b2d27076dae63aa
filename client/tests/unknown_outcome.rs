//! A write is never sent twice. Two fake nodes take connections and count the requests they
//! receive; whichever gets the put first either never answers or drops the connection. The
//! client must report the outcome as unknown rather than send the put to the other node: the
//! first copy may still apply, and a second one applying after another client's write to the
//! key would undo that write.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_of, read_frame};
use corekv_client::Error;
use corekv_proto::encode::ReplyEncoder;

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Reads the request and never answers.
    Silent,
    /// Reads the request and closes the connection.
    Drop,
}

/// A fake node `id` on `listener`: answers hellos, counts the puts after them in `requests`,
/// and treats each as `behaviour` says (other requests go unanswered). Serves connections for `for_how_long`.
fn fake_node(
    listener: TcpListener,
    id: u64,
    behaviour: Behaviour,
    requests: Arc<AtomicUsize>,
    for_how_long: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + for_how_long;
        let mut held = Vec::new();
        while Instant::now() < until {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let requests = requests.clone();
            held.push(std::thread::spawn(move || {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                if read_frame(&mut stream).is_none() {
                    return;
                }
                stream.write_all(ReplyEncoder::new().hello(0, id, 0, 1)).unwrap();
                while let Some(frame) = read_frame(&mut stream) {
                    // Only puts count: the client also asks for the shard's members.
                    let mut whole = (frame.len() as u32).to_le_bytes().to_vec();
                    whole.extend_from_slice(&frame);
                    let request = corekv_proto::frame::verify_request(&whole).unwrap();
                    if request.request_type() != corekv_proto::client::Request::PutRequest {
                        continue;
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    if behaviour == Behaviour::Drop {
                        return;
                    }
                }
            }));
        }
        for connection in held {
            let _ = connection.join();
        }
    })
}

fn put_once(behaviour: Behaviour) -> (Result<(), Error>, usize) {
    let listeners: Vec<TcpListener> =
        (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    let requests = Arc::new(AtomicUsize::new(0));
    let nodes: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            fake_node(l, i as u64 + 1, behaviour, requests.clone(), Duration::from_secs(2))
        })
        .collect();
    let client = client_of(&ports, Duration::from_millis(1500));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let outcome = runtime.block_on(async { client.put("k", "v").await.map(|_| ()) });
    // Give a resend, were there one, time to arrive before counting.
    std::thread::sleep(Duration::from_millis(300));
    let sent = requests.load(Ordering::SeqCst);
    drop(client);
    drop(runtime);
    for node in nodes {
        node.join().unwrap();
    }
    (outcome, sent)
}

#[test]
fn a_put_to_a_node_that_never_answers_is_not_sent_again() {
    let (outcome, sent) = put_once(Behaviour::Silent);
    assert!(matches!(outcome, Err(Error::Indeterminate(_))), "{outcome:?}");
    assert_eq!(sent, 1, "the put reached the nodes {sent} times");
}

#[test]
fn a_put_whose_connection_drops_is_not_sent_again() {
    let (outcome, sent) = put_once(Behaviour::Drop);
    assert!(matches!(outcome, Err(Error::Indeterminate(_))), "{outcome:?}");
    assert_eq!(sent, 1, "the put reached the nodes {sent} times");
}

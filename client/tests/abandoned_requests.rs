//! A request the client gave up on must not reach the node later. Here a fake node takes the
//! connection, answers the hello and then reads nothing, so the client's puts pile up unsent in
//! its socket; the client times out and moves on. When the node reads again, it must not get
//! them: the client reset the connection, and the kernel dropped what it still held. (Closed
//! normally, the socket would deliver every byte once the node read again: a write applied
//! long after its caller was told it failed, or after a retry elsewhere succeeded.)

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::{client_of, read_frame};
use corekv_proto::encode::ReplyEncoder;

const PUTS: usize = 24;
const VALUE_BYTES: usize = 1024 * 1024;

#[test]
fn requests_given_up_on_are_not_delivered_later() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let node = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        read_frame(&mut stream).expect("the client's hello");
        stream.write_all(ReplyEncoder::new().hello(0, 1, 0, 1)).unwrap();
        // Read nothing while the client sends and gives up.
        std::thread::sleep(Duration::from_millis(1500));
        let mut received = 0usize;
        let mut buffer = vec![0u8; 1 << 20];
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
        received
    });

    let client = client_of(&[port], Duration::from_millis(400));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let outcomes = runtime.block_on(async {
        let value = vec![7u8; VALUE_BYTES];
        let puts = (0..PUTS).map(|i| {
            let (client, value) = (client.clone(), value.clone());
            async move { client.put(format!("k{i}"), value).await }
        });
        futures_util::future::join_all(puts).await
    });
    assert!(
        outcomes.iter().all(|o| o.is_err()),
        "a put succeeded against a node that never answers"
    );

    // The runtime keeps running meanwhile: its tasks would keep sending, were the
    // connection only closed.
    let received = runtime
        .block_on(async { tokio::task::spawn_blocking(|| node.join().unwrap()).await.unwrap() });
    assert!(
        received < PUTS * VALUE_BYTES / 2,
        "the node received {received} bytes of {} the client gave up on",
        PUTS * VALUE_BYTES
    );
    drop(runtime);
}

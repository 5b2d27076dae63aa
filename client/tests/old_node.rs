//! A client refuses a node that speaks an older client protocol than its own, with a message
//! that says so, instead of reading the fields the old node does not send as zeros or
//! "not serving". Here a fake node answers the hello as a version-1 node would.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::{client_of, read_frame};
use corekv_proto::constants::CLIENT_PROTOCOL_VERSION;
use corekv_proto::encode::ReplyEncoder;

#[test]
fn a_node_older_than_the_client_is_refused_by_name() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let node = std::thread::spawn(move || {
        // A refused handshake is final: the client does not come back.
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            read_frame(&mut stream).expect("the client's hello");
            let old = CLIENT_PROTOCOL_VERSION - 1;
            stream.write_all(ReplyEncoder::new().hello_speaking(0, 1, 0, 1, old)).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    let client = client_of(&[port], Duration::from_secs(2));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(client.get("k")).expect_err("an old node was used");
    let message = error.to_string();
    assert!(
        message.contains(&format!("client protocol {}", CLIENT_PROTOCOL_VERSION - 1))
            && message.contains("upgrade the node"),
        "{message}"
    );
    node.join().unwrap();
}

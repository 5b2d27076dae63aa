//! Helpers for tests that run the client against fake nodes on loopback.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use corekv_client::registry::Registry;
use corekv_client::{Client, ClientConfig};

/// Reads one size-prefixed frame; `None` when the connection ends.
pub fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut frame = vec![0u8; u32::from_le_bytes(size) as usize];
    stream.read_exact(&mut frame).ok()?;
    Some(frame)
}

/// A client of a one-shard cluster whose nodes 1, 2, ... listen for clients on `ports`, with
/// the call deadline `timeout`, 200 ms per attempt and 100 ms per connection attempt.
pub fn client_of(ports: &[u16], timeout: Duration) -> Client {
    let mut text = String::from("cluster = \"c\"\nshards = 1\n");
    for (i, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "\n[[node]]\nid = {}\nhost = \"127.0.0.1\"\nclient_port = {port}\npeer_port = {}\n\
             http_port = {}\n",
            i + 1,
            port.wrapping_add(1000),
            port.wrapping_add(2000)
        ));
    }
    let mut config = ClientConfig::new(Registry::parse(&text, "test registry").unwrap());
    config.timeout = timeout;
    config.attempt_timeout = Duration::from_millis(200);
    config.connect_timeout = Duration::from_millis(100);
    Client::connect(config)
}

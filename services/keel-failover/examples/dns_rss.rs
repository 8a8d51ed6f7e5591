//! What DNS swing costs in resident memory: VmRSS of this process before the
//! server starts, once it is bound, and after it has answered queries over UDP and
//! TCP (every answer checked). Run it as the appliance would build it:
//!
//! ```sh
//! cargo run --release -p keel-failover --example dns_rss [udp-queries] [tcp-queries]
//! ```

use std::net::SocketAddr;

use keel_failover::dns::{DnsConfig, DnsServer, Who};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{key} not in /proc/self/status"))
}

/// A plain A query for portal.example.com with id `id`, no EDNS.
fn query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in ["portal", "example", "com"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, A, IN
    q
}

/// NOERROR with AA and one answer, for our id.
fn check(id: u16, r: &[u8]) {
    assert!(r.len() > 12, "short answer");
    assert_eq!(u16::from_be_bytes([r[0], r[1]]), id);
    assert_eq!(r[2] & 0x84, 0x84, "QR and AA");
    assert_eq!(r[3] & 0x0f, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
}

async fn udp_queries(addr: SocketAddr, n: u16) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 512];
    for id in 0..n {
        sock.send_to(&query(id), addr).await.unwrap();
        let len = sock.recv(&mut buf).await.unwrap();
        check(id, &buf[..len]);
    }
}

async fn tcp_queries(addr: SocketAddr, n: u16) {
    for id in 0..n {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let q = query(id);
        c.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        c.write_all(&q).await.unwrap();
        let len = c.read_u16().await.unwrap() as usize;
        let mut r = vec![0; len];
        c.read_exact(&mut r).await.unwrap();
        check(id, &r);
    }
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u16>().expect("a count"));
    let (udp, tcp) = (args.next().unwrap_or(5000), args.next().unwrap_or(500));
    // The daemon's runtime shape: multi-threaded, two cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg: DnsConfig = serde_json::from_value(serde_json::json!({
            "enabled": true, "name": "portal.example.com", "listen": "127.0.0.1:0",
            "this_node": ["192.0.2.10", "2001:db8::10"],
            "peer_node": ["198.51.100.20", "2001:db8::20"],
            "nameservers": ["kf-a.example.net", "kf-b.example.net"]
        }))
        .unwrap();
        let (tx, rx) = watch::channel(Who::ThisNode);
        let before = status_kib("VmRSS:");
        let server = DnsServer::bind(&cfg, rx).await.unwrap().unwrap();
        let addr = server.local_addrs()[0];
        tokio::spawn(server.run());
        // Let the listener tasks start.
        udp_queries(addr, 1).await;
        let bound = status_kib("VmRSS:");
        udp_queries(addr, udp / 2).await;
        tx.send(Who::PeerNode).unwrap();
        udp_queries(addr, udp - udp / 2).await;
        tcp_queries(addr, tcp).await;
        let after = status_kib("VmRSS:");
        println!("VmRSS before the server:     {before} KiB");
        println!(
            "VmRSS bound, first answer:   {bound} KiB (+{} KiB)",
            bound - before
        );
        println!(
            "VmRSS after {udp} UDP + {tcp} TCP: {after} KiB (+{} KiB over before)",
            after - before
        );
        println!("VmHWM:                       {} KiB", status_kib("VmHWM:"));
    });
}

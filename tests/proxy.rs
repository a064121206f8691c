//! Behind nginx, configured as the README's "Deploying" section says: event streams and
//! WebSockets reach their clients through the proxy one event at a time, with nginx's
//! response buffering left at its default (the stream's `X-Accel-Buffering: no` turns it
//! off for the stream), and closing the hub ends both through it.
//!
//! Runs where `FANOUT_NGINX` names an nginx binary (`scripts/test.sh` installs Debian's and sets
//! it); elsewhere each test says it was skipped.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tower_fanout::{Hub, StreamLayer};
use tower_layer::Layer;

use common::{
    Inner, SseClient, WAIT, close_code, next_text, on_a_free_port, serve_fanout, wait_until,
    ws_connect,
};

/// An nginx of the test's own on a free loopback port, proxying to `upstream`; stopped
/// when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// `None` where no nginx is given.
    fn start(upstream: SocketAddr) -> Option<Self> {
        let Some(binary) = std::env::var_os("FANOUT_NGINX") else {
            eprintln!("skipped: set FANOUT_NGINX to an nginx binary to run the proxy tests");
            return None;
        };
        Some(on_a_free_port("nginx", |port| {
            Self::start_on(&binary, port, upstream)
        }))
    }

    /// nginx on `port`; `None` if it exits before it listens.
    fn start_on(binary: &std::ffi::OsStr, port: u16, upstream: SocketAddr) -> Option<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!(
            "fanout-nginx-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).expect("a directory");
        let d = dir.display();
        // Buffering is left at nginx's default (on); the WebSocket needs the upgrade
        // headers passed on, and quiet streams a read timeout past the keep-alives.
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             \x20 server {{\n    listen {addr};\n    location / {{\n\
             \x20     proxy_pass http://{upstream};\n      proxy_http_version 1.1;\n\
             \x20     proxy_set_header Upgrade $http_upgrade;\n\
             \x20     proxy_set_header Connection $connection_upgrade;\n\
             \x20     proxy_set_header Host $host;\n      proxy_read_timeout 60s;\n    }}\n  }}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("written");
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let deadline = Instant::now() + WAIT;
        loop {
            let exited = child.try_wait().expect("nginx's status").is_some();
            if exited {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(Self { child, addr, dir });
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: see {d}/error.log"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_every_event_arrives_as_it_is_broadcast() {
    let hub = Hub::new();
    let upstream = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let Some(nginx) = Nginx::start(upstream) else {
        return;
    };
    let mut sse = SseClient::connect(nginx.addr, "/?topic=news").await;
    assert!(sse.headers.starts_with("HTTP/1.1 200"), "{}", sse.headers);
    // nginx obeys the header and does not pass it on.
    assert!(
        !sse.headers
            .to_ascii_lowercase()
            .contains("x-accel-buffering"),
        "{}",
        sse.headers
    );
    let mut socket = ws_connect(&format!("ws://{}/?topic=news", nginx.addr)).await;
    wait_until("both subscribed through the proxy", || {
        hub.stats().subscribers == 2
    })
    .await;

    // Each small event arrives before the next is sent.
    for round in 0..5 {
        let event = format!("event {round}");
        assert_eq!(hub.broadcast("news", event.clone()), 2);
        assert_eq!(sse.next_event().await.data, event);
        assert_eq!(next_text(&mut socket).await, event);
    }

    // Closing the hub ends both through the proxy.
    hub.close();
    sse.until_end().await;
    assert_eq!(close_code(&mut socket).await, Some(1001));
}

//! A soak run: clients that come and go for minutes while events flow, with the server's
//! memory and file descriptors watched from outside, and every resumed stream checked
//! for a gap or a duplicate.
//!
//! ```sh
//! cargo run --release --example soak                            # 10 minutes, 2 000 clients
//! cargo run --release --example soak -- seconds=30 clients=500  # what CI runs, shorter
//! ```
//!
//! The server, in a process of its own, is the layer under `tower_fanout::serve`
//! (`server=serve`) or, as the demo serves it, under hyper-util's auto builder
//! (`server=hyper`), on a hub that keeps `history` events per topic, with WebSocket
//! frames carrying ids. Inside it a
//! publisher sends `rate` events per second, round robin over `topics` topics; each event's
//! data is its number within its topic. Half the clients are WebSocket, half SSE; each
//! subscribes to a topic, reads for 2 to 8 seconds, drops the connection and reconnects
//! at once with the last id it saw (`Last-Event-ID`, `?since=`). Every event a client
//! gets must be the one after the last it saw: one further on is a miss within history,
//! one not after it a duplicate, and the run fails on either.
//!
//! `attach=ADDR pid=PID` runs the clients against a server started elsewhere, such as the
//! demo (`cargo run --example hyper_server`, whose routes the clients use), publishing
//! through its `POST /publish/{topic}`; PID is the server's, whose memory is watched.
//!
//! Reported once the run has warmed up (after a minute, or a third of a shorter run),
//! every tenth of the run after that, and at the end: the server's RSS and open file
//! descriptors, and its subscribers and deliveries. In a run of five minutes or more, the end's RSS and descriptors must be
//! within 10 % of the first report's, or the run fails. Every loop is bounded by the
//! run's time; the server is killed at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "support/load.rs"]
mod load;
#[path = "../tests/support/process.rs"]
mod process;
use load::{ServerProcess, ws_frame};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let usage = "serve ADDR HISTORY SERVER";
        let addr: SocketAddr = args.get(1).ok_or(usage)?.parse()?;
        let history: usize = args.get(2).ok_or(usage)?.parse()?;
        let kind = args.get(3).ok_or(usage)?.clone();
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(server::run(addr, history, &kind));
    }
    let options = Options::parse(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(drive(options))
}

#[derive(Clone, Debug)]
struct Options {
    seconds: u64,
    clients: usize,
    topics: usize,
    rate: usize,
    history: usize,
    server: String,
    /// A server started elsewhere (the demo, say) and its process id, for its memory.
    attach: Option<(SocketAddr, u32)>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, Box<dyn std::error::Error>> {
        let mut options = Self {
            seconds: 600,
            clients: 2_000,
            topics: 50,
            rate: 1_000,
            history: 256,
            server: "serve".to_owned(),
            attach: None,
        };
        let mut attach = None;
        let mut pid = None;
        for arg in args {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {arg}"))?;
            match key {
                "seconds" => options.seconds = value.parse()?,
                "clients" => options.clients = value.parse()?,
                "topics" => options.topics = value.parse::<usize>()?.max(1),
                "rate" => options.rate = value.parse::<usize>()?.max(1),
                "history" => options.history = value.parse()?,
                "server" if ["serve", "hyper"].contains(&value) => {
                    options.server = value.to_owned();
                }
                "attach" => attach = Some(value.parse()?),
                "pid" => pid = Some(value.parse()?),
                other => return Err(format!("unknown option {other}").into()),
            }
        }
        options.attach = match (attach, pid) {
            (Some(addr), Some(pid)) => Some((addr, pid)),
            (None, None) => None,
            _ => return Err("attach=ADDR needs pid=PID, for the server's memory".into()),
        };
        Ok(options)
    }
}

/// What the clients saw, summed.
#[derive(Default)]
struct Tally {
    deliveries: AtomicU64,
    connections: AtomicU64,
    resumes: AtomicU64,
    missed: AtomicU64,
    duplicates: AtomicU64,
    lost_notices: AtomicU64,
    failed_connects: AtomicU64,
}

/// The server's state as seen from outside at one moment.
#[derive(Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    subscribers: u64,
    deliveries: u64,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at {:>4} s: server RSS {} KiB, {} open fds, {} subscribers, {} deliveries",
            self.at.as_secs(),
            self.rss_kib,
            self.fds,
            self.subscribers,
            self.deliveries
        )
    }
}

async fn drive(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let wanted = 4 * options.clients as u64 + 1024;
    if process::raise_fd_limit(wanted) < wanted {
        return Err(format!("the open-file limit is below {wanted}").into());
    }
    println!("{options:?}");
    let server = match options.attach {
        Some((addr, pid)) => Server::Attached { addr, pid },
        None => Server::start(options.history, &options.server).await?,
    };
    let run = Duration::from_secs(options.seconds);
    let started = Instant::now();
    let end = started + run;
    // The clients go on a little past the end, so that the last report sees them all.
    let clients_end = end + Duration::from_secs(2);
    let publisher = server
        .publish(options.rate, options.topics, options.seconds + 1)
        .await?;

    let tally = Arc::new(Tally::default());
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..options.clients {
        let tally = Arc::clone(&tally);
        let topic = format!("soak-{}", index % options.topics);
        let transport = if index % 2 == 0 { Ws } else { Sse };
        clients.spawn(client(
            server.addr(),
            topic,
            transport,
            index as u64,
            clients_end,
            tally,
        ));
    }

    // The first report once warmed up; then one each tenth of the run, the last at its end.
    let first_at = Duration::from_secs(60).min(run / 3);
    tokio::time::sleep_until((started + first_at).into()).await;
    let first = server.sample(started).await?;
    println!("{first}");
    let step = (run / 10).max(Duration::from_secs(1));
    let mut next = started + first_at + step;
    let last = loop {
        tokio::time::sleep_until(next.min(end).into()).await;
        let sample = server.sample(started).await?;
        println!("{sample}");
        if next >= end {
            break sample;
        }
        next += step;
    };
    // Every client stops at `end`; the wait is bounded by its last read's timeout.
    while clients.join_next().await.is_some() {}
    if let Some(publisher) = publisher {
        publisher.abort();
    }

    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    println!(
        "clients: {} connections, {} resumed, {} deliveries; missed within history {}, \
         duplicates {}, lost notices {}, failed connects {}",
        count(&tally.connections),
        count(&tally.resumes),
        count(&tally.deliveries),
        count(&tally.missed),
        count(&tally.duplicates),
        count(&tally.lost_notices),
        count(&tally.failed_connects),
    );
    let growth = |first: f64, last: f64| (last - first) / first.max(1.0) * 100.0;
    let rss = growth(first.rss_kib as f64, last.rss_kib as f64);
    let fds = growth(first.fds as f64, last.fds as f64);
    println!("from the first report to the end: RSS {rss:+.1} %, fds {fds:+.1} %");

    let mut failures = Vec::new();
    if count(&tally.missed) + count(&tally.duplicates) > 0 {
        failures.push("a resumed client missed an event within history or got one twice");
    }
    if count(&tally.deliveries) == 0 {
        failures.push("no event was delivered");
    }
    if options.seconds >= 300 && (rss > 10.0 || fds > 10.0) {
        failures.push("memory or descriptors grew by more than 10 %");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// The server under test: in a child process of its own, or one started elsewhere.
enum Server {
    Child(ServerProcess),
    Attached { addr: SocketAddr, pid: u32 },
}

impl Server {
    async fn start(history: usize, kind: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let history = history.to_string();
        let args = |addr: &str| ["serve", addr, &history, kind].map(str::to_owned).to_vec();
        Ok(Self::Child(ServerProcess::start(args).await?))
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Self::Child(process) => process.addr,
            Self::Attached { addr, .. } => *addr,
        }
    }

    fn pid(&self) -> String {
        match self {
            Self::Child(process) => process.pid(),
            Self::Attached { pid, .. } => pid.to_string(),
        }
    }

    /// Starts the publisher: the server's own, or for an attached server (the demo) one
    /// here, through its `POST /publish/{topic}` on one keep-alive connection.
    async fn publish(
        &self,
        rate: usize,
        topics: usize,
        seconds: u64,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, Box<dyn std::error::Error>> {
        if let Self::Child(_) = self {
            load::control(
                self.addr(),
                &format!("/publish?rate={rate}&topics={topics}&seconds={seconds}"),
            )
            .await?;
            return Ok(None);
        }
        let mut stream = TcpStream::connect(self.addr()).await?;
        Ok(Some(tokio::spawn(async move {
            let mut numbers = vec![0u64; topics];
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            let mut answers = vec![0; 4096];
            for tick in 0..rate as u64 * seconds {
                ticks.tick().await;
                let topic = (tick % topics as u64) as usize;
                let body = numbers[topic].to_string();
                numbers[topic] += 1;
                let request = format!(
                    "POST /publish/soak-{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(request.as_bytes()).await.is_err() {
                    return;
                }
                // The answers are small and not needed: drained as they come.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::ZERO, stream.read(&mut answers)).await
                {
                    if n == 0 {
                        return;
                    }
                }
            }
        })))
    }

    async fn sample(&self, started: Instant) -> Result<Sample, Box<dyn std::error::Error>> {
        let pid = self.pid();
        // An attached server has no stats endpoint: its counts are reported as 0.
        let (subscribers, deliveries) = match self {
            Self::Child(_) => {
                let stats = load::control(self.addr(), "/stats").await?;
                let mut numbers = stats.split_whitespace().map(str::parse::<u64>);
                let (Some(Ok(subscribers)), Some(Ok(deliveries))) =
                    (numbers.next(), numbers.next())
                else {
                    return Err(format!("unexpected stats {stats:?}").into());
                };
                (subscribers, deliveries)
            }
            Self::Attached { .. } => (0, 0),
        };
        Ok(Sample {
            at: started.elapsed(),
            rss_kib: process::rss_kib(&pid),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
            subscribers,
            deliveries,
        })
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Ws,
    Sse,
}
use Transport::{Sse, Ws};

/// What a client knows of its topic across its connections.
#[derive(Default)]
struct Position {
    /// The id and number of the last event it saw.
    last: Option<(String, u64)>,
}

impl Position {
    /// Takes an event of this topic, counting what was skipped or repeated.
    fn saw(&mut self, id: &str, number: u64, tally: &Tally) {
        tally.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some((_, last)) = &self.last {
            if number <= *last {
                tally.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            tally.missed.fetch_add(number - last - 1, Ordering::Relaxed);
        }
        self.last = Some((id.to_owned(), number));
    }
}

/// One client: connects, reads for a while, drops the connection and resumes, until
/// `end`.
async fn client(
    addr: SocketAddr,
    topic: String,
    transport: Transport,
    seed: u64,
    end: Instant,
    tally: Arc<Tally>,
) {
    let mut position = Position::default();
    let mut random = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while Instant::now() < end {
        // xorshift: each client its own, repeatable, durations.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let stay = Duration::from_millis(2_000 + random % 6_000);
        let until = (Instant::now() + stay).min(end);
        let resume = position.last.as_ref().map(|(id, _)| id.clone());
        if resume.is_some() {
            tally.resumes.fetch_add(1, Ordering::Relaxed);
        }
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let read = match transport {
            Ws => ws_session(addr, &topic, resume, until, &mut position, &tally).await,
            Sse => sse_session(addr, &topic, resume, until, &mut position, &tally).await,
        };
        if read.is_err() {
            tally.failed_connects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads from `stream` until `until`, handing what arrives to `take`; false when the
/// server closed the stream.
async fn read_until(
    stream: &mut TcpStream,
    until: Instant,
    pending: &mut Vec<u8>,
    mut take: impl FnMut(&mut Vec<u8>),
) -> std::io::Result<()> {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = tokio::time::timeout_at(until.into(), stream.read(&mut buffer)).await;
        let Ok(read) = read else {
            return Ok(());
        };
        let n = read?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&buffer[..n]);
        take(pending);
    }
}

async fn ws_session(
    addr: SocketAddr,
    topic: &str,
    resume: Option<String>,
    until: Instant,
    position: &mut Position,
    tally: &Tally,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let since = resume.map(|id| format!("?since={id}")).unwrap_or_default();
    let request = format!(
        "GET /events/{topic}{since} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut pending = Vec::new();
    let mut upgraded = false;
    read_until(&mut stream, until, &mut pending, |pending| {
        if !upgraded {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            pending.drain(..end + 4);
            upgraded = true;
        }
        let mut start = 0;
        while let Some((opcode, payload, next)) = ws_frame(&pending[start..]) {
            // Frames of `websocket_ids`: the id, a newline, the data; a loss is announced
            // with an empty id and `lost`.
            if opcode == 1
                && let Ok(text) = std::str::from_utf8(payload)
                && let Some((id, data)) = text.split_once('\n')
            {
                if id.is_empty() {
                    tally.lost_notices.fetch_add(1, Ordering::Relaxed);
                    position.last = None;
                } else if let Ok(number) = data.parse() {
                    position.saw(id, number, tally);
                }
            }
            start += next;
        }
        pending.drain(..start);
    })
    .await
}

async fn sse_session(
    addr: SocketAddr,
    topic: &str,
    resume: Option<String>,
    until: Instant,
    position: &mut Position,
    tally: &Tally,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let last_id = resume
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /events/{topic} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{last_id}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut pending = Vec::new();
    read_until(&mut stream, until, &mut pending, |pending| {
        // Chunk framing aside, an event is lines up to a blank line: `id:` and `data:`
        // for the topic's events, `event: lost` for a loss.
        let mut start = 0;
        while let Some(end) = pending[start..].windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8_lossy(&pending[start..start + end]);
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::to_owned)
            };
            if field("event: ").as_deref() == Some("lost") {
                tally.lost_notices.fetch_add(1, Ordering::Relaxed);
                position.last = None;
            } else if let (Some(id), Some(Ok(number))) = (
                field("id: "),
                field("data: ").map(|data| data.parse::<u64>()),
            ) {
                position.saw(&id, number, tally);
            }
            start += end + 2;
        }
        pending.drain(..start);
    })
    .await
}

/// The server under test: the layer under `tower_fanout::serve`, a publisher and stats.
mod server {
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::routing::post;
    use tower_fanout::{Hub, StreamLayer};

    pub(super) async fn run(
        addr: SocketAddr,
        history: usize,
        kind: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        super::process::raise_fd_limit(u64::MAX);
        let hub = Hub::builder().history(history).build();
        let layer = StreamLayer::new(hub.clone())
            .path("/events/")
            .websocket_ids(true)
            .topic(|parts| Ok(parts.uri.path().trim_start_matches("/events/").to_owned()));
        let app = Router::new()
            .route("/stats", post(stats))
            .route("/publish", post(publish))
            .with_state(hub)
            .layer(layer);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        if kind == "serve" {
            tower_fanout::serve(listener, app).await;
            return Ok(());
        }
        // As the demo serves: hyper-util's auto builder, upgrades enabled.
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    }

    async fn stats(State(hub): State<Hub>) -> String {
        let stats = hub.stats();
        format!("{} {}", stats.subscribers, stats.deliveries)
    }

    /// Starts publishing `rate` events per second for `seconds`, round robin over
    /// `topics` topics; each event's data is its number within its topic.
    async fn publish(State(hub): State<Hub>, uri: http::Uri) -> &'static str {
        let param = |name: &str| -> u64 {
            uri.query()
                .and_then(|query| {
                    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name)
                })
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or(1)
                .max(1)
        };
        let (rate, topics, seconds) = (param("rate"), param("topics"), param("seconds"));
        let names: Vec<String> = (0..topics).map(|topic| format!("soak-{topic}")).collect();
        tokio::spawn(async move {
            let mut numbers = vec![0u64; names.len()];
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            for tick in 0..rate * seconds {
                ticks.tick().await;
                let topic = (tick % topics) as usize;
                hub.broadcast(&names[topic], numbers[topic].to_string());
                numbers[topic] += 1;
            }
        });
        "publishing"
    }
}

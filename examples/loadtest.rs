//! End-to-end load: real WebSocket and SSE clients on 127.0.0.1 against a server in its
//! own process, tower-fanout beside the baseline Rust users hand-roll today (axum's
//! `WebSocketUpgrade` and `Sse` over one `tokio::sync::broadcast` per topic in a
//! `Mutex<HashMap>`), measured in the same run.
//!
//! ```sh
//! cargo run --release --example loadtest                      # every phase, both servers
//! cargo run --release --example loadtest -- clients=1000 broadcasts=1000 size=64 idle=10000
//! cargo run --release --example loadtest -- phases=burst servers=crate transports=ws
//! ```
//!
//! `attach=ADDR` runs the phases against a server already listening at ADDR instead (one
//! started with `loadtest serve KIND ADDR`, under a profiler for example); the server's
//! CPU and memory are then not reported.
//!
//! Servers: `crate` is the layer served by `tower_fanout::serve` (`crate-deflate` with
//! compression); `crate-tls` the same over
//! TLS (`serve(..).with_transport(..)`, rustls, a certificate the server makes and the
//! clients trust); `crate-axum` is the same application served by `axum::serve`, as the
//! baseline is. `bare` is the floor: a server
//! with no hub and no HTTP or WebSocket library, which encodes each event once and
//! appends it to every connection's queue.
//!
//! Phases, each against a fresh server process:
//! - `burst`: `clients` clients on one topic; the server publishes `broadcasts` events of
//!   `size` bytes as fast as it can. Reports deliveries per second, the server's CPU time
//!   per delivery (from `/proc`), latency p50/p99/max (a timestamp travels in each
//!   payload) and missing deliveries.
//! - `steady`: 100 broadcasts per second for 10 s to `clients` clients. Reports latency
//!   p50/p99/max and the spread between the first and the last subscriber of each event.
//! - `idle`: `idle` connections that each receive `idle_events` events (5) and go quiet;
//!   reports the server's RSS growth per connection.
//! - `crowd`: `crowd` connections (100 000), half WebSocket and half SSE, from the
//!   source addresses 127.0.0.1 to 127.0.0.8 in turn (past one address's ephemeral
//!   ports). Reports how fast the server took them (until the hub counts every
//!   subscription), its RSS growth per connection, how long one broadcast took to reach
//!   every one (each must get it) and the CPU that broadcast cost the server and the
//!   clients. Not in the default phases; `phases=crowd` runs it once, whatever
//!   `transports` says. The tool and the server raise their descriptor limits (the hard
//!   one too where allowed), and since a limit bounds one file table, not a process,
//!   both spread the crowd over threads with file tables of their own, as many as it
//!   takes and at least two (`support/tables.rs`): the clients open their shares side by
//!   side, and the server (`loadtest serve KIND ADDR tables=K`) runs a current-thread
//!   runtime per table, each with a listener of its own on the one port
//!   (`SO_REUSEPORT`), all serving one hub.
//! - `stall`: `clients` clients that never read; the server publishes `broadcasts` events
//!   of `size` bytes. Reports the server's RSS before and after, once it has settled:
//!   what connections whose clients have stopped reading cost it. Not in the default
//!   phases; try `phases=stall clients=1000 broadcasts=200 size=262144`.
//!
//! `payload=json` makes every event JSON-like text (records of ids, names and prices that
//! change from event to event), as real events are, instead of a run of one letter, which
//! compresses beyond belief. `per_client=1` (the crate's servers, burst phase) puts each client on
//! a topic of its own and publishes every event of a burst to each topic, so every
//! delivery is an event of its own: with compression, what a compressor per connection
//! would cost. The WebSocket clients offer permessage-deflate as browsers do and inflate
//! what comes compressed; `crate-deflate` is the `crate` server with
//! `compression(Compression::new())`. The burst reports the bytes the clients read per
//! delivery.
//!
//! `storm=1` makes the clients of every phase connect all their sockets first and then
//! send every request, as the clients of a restarted server come back at once: the
//! server then has them all waiting for their request heads together. The idle phase
//! shows what that leaves resident.
//!
//! `topics=N` gives each client N topics on its one connection (the crate's servers only):
//! a burst spreads its events round robin over them, so that every client still gets
//! every event, and the steady phase publishes to the first one, the others quiet.
//! `topics=1,10` runs every phase with each count in turn, side by side.
//!
//! Built with `--features metrics`, the servers record into a Prometheus recorder, so that
//! a run beside one without shows what the metrics cost.
//!
//! Every loop is bounded in count and time; the server process is killed at the end. The
//! tool exits with an error when a delivery is missing: the servers keep 4 096 events
//! per subscriber, so up to that many broadcasts none may be lost.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "load";
/// The most a client asks the socket for at once.
const READ: usize = 64 * 1024;
/// The least a client asks the socket for at once: what one small event needs, so that a
/// crowd's clients, which get one event each, cost the machine little memory.
const READ_MIN: usize = 4 * 1024;
/// The source addresses clients spread over: each has its own ephemeral ports.
const SOURCES: u8 = 8;
/// The longest any phase waits for its events before it reports what is missing.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let kind = args.get(1).cloned().unwrap_or_default();
        let addr: SocketAddr = args.get(2).ok_or("serve KIND ADDR")?.parse()?;
        // `crate-tls` writes the certificate it made to `certificate=PATH`, for the clients
        // to trust; `tables=K` serves on K file tables (see `support/tables.rs`).
        let (mut certificate, mut tables) = (None, 1);
        for arg in &args[3..] {
            match arg.split_once('=') {
                Some(("certificate", path)) => certificate = Some(path.into()),
                Some(("tables", count)) => tables = count.parse()?,
                _ => return Err(format!("unknown server option {arg}").into()),
            }
        }
        // The server under test: two workers, as many as the machine has cores; or, past
        // what one file table holds, one current-thread runtime per table.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let tables = (tables > 1).then(|| Tables::start(tables)).transpose()?;
        let runtimes = tables
            .as_ref()
            .map_or_else(|| vec![runtime.handle().clone()], |t| t.handles().to_vec());
        return runtime.block_on(server::run(&kind, addr, certificate, &runtimes));
    }
    let options = Options::parse(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(drive(options))
}

#[derive(Clone, Debug)]
struct Options {
    clients: usize,
    broadcasts: usize,
    size: usize,
    idle: usize,
    /// Connections of the crowd phase.
    crowd: usize,
    /// Events each idle connection receives before it is measured.
    idle_events: usize,
    phases: Vec<String>,
    servers: Vec<String>,
    transports: Vec<String>,
    attach: Option<SocketAddr>,
    /// Whether events are JSON-like text rather than one letter repeated.
    json: bool,
    /// Whether each client has a topic of its own.
    per_client: bool,
    /// Whether the clients of a phase connect all at once.
    storm: bool,
    /// The topic counts to run every phase with, in turn.
    topic_counts: Vec<usize>,
    /// The topics per connection of the run in progress.
    topics: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, Box<dyn std::error::Error>> {
        let mut options = Self {
            clients: 1_000,
            broadcasts: 1_000,
            size: 64,
            idle: 10_000,
            crowd: 100_000,
            idle_events: 5,
            phases: vec!["burst".into(), "steady".into(), "idle".into()],
            servers: vec!["crate".into(), "baseline".into()],
            transports: vec!["ws".into(), "sse".into()],
            attach: None,
            json: false,
            per_client: false,
            storm: false,
            topic_counts: vec![1],
            topics: 1,
        };
        for arg in args {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {arg}"))?;
            let list = || value.split(',').map(str::to_owned).collect();
            match key {
                "clients" => options.clients = value.parse()?,
                "broadcasts" => options.broadcasts = value.parse()?,
                "size" => options.size = value.parse::<usize>()?.max(24),
                "idle" => options.idle = value.parse()?,
                "crowd" => options.crowd = value.parse()?,
                "idle_events" => options.idle_events = value.parse()?,
                "phases" => options.phases = list(),
                "servers" => options.servers = list(),
                "transports" => options.transports = list(),
                "attach" => options.attach = Some(value.parse()?),
                "payload" => options.json = value == "json",
                "per_client" => options.per_client = value == "1",
                "storm" => options.storm = value == "1",
                "topics" => {
                    options.topic_counts = value
                        .split(',')
                        .map(|count| count.parse::<usize>().map(|count| count.max(1)))
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(format!("unknown option {other}").into()),
            }
        }
        Ok(options)
    }
}

/// Whether clients take topics of their own (`per_client=1`), for every phase.
static PER_CLIENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Whether the clients of a phase connect in a storm (`storm=1`).
static STORM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn drive(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let fd_limit = raise_fd_limit();
    PER_CLIENT.store(options.per_client, Ordering::Relaxed);
    STORM.store(options.storm, Ordering::Relaxed);
    println!("{options:?}");
    let mut missing = 0;
    for phase in &options.phases {
        // A crowd is of both transports at once.
        let transports = if phase == "crowd" {
            vec!["mix".to_owned()]
        } else {
            options.transports.clone()
        };
        for transport in &transports {
            for (topics, kind) in options
                .topic_counts
                .iter()
                .flat_map(|&topics| options.servers.iter().map(move |kind| (topics, kind)))
            {
                let options = Options {
                    topics,
                    ..options.clone()
                };
                let label = if options.topic_counts.len() > 1 {
                    format!("{kind} x{topics}")
                } else {
                    kind.clone()
                };
                if topics > 1 && !kind.starts_with("crate") {
                    println!("{phase:6} {transport:3} {label:8} (one topic per connection only)");
                    continue;
                }
                // A crowd takes more sockets than one file table holds, on both sides.
                let tables = if phase == "crowd" {
                    Tables::needed(options.crowd, fd_limit, 2)
                } else {
                    1
                };
                let server = Arc::new(match options.attach {
                    Some(addr) => Server {
                        process: None,
                        addr,
                        tls: None,
                    },
                    None => Server::start(kind, tables).await?,
                });
                let (line, missed) = match phase.as_str() {
                    "burst" => burst(&server, transport, &options).await?,
                    "steady" => steady(&server, transport, &options).await?,
                    "idle" => idle(&server, transport, &options).await?,
                    "stall" => stall(&server, transport, &options).await?,
                    "crowd" => crowd(&server, &options, tables).await?,
                    other => return Err(format!("unknown phase {other}").into()),
                };
                println!("{phase:6} {transport:3} {label:8} {line}");
                missing += missed;
            }
        }
    }
    // Within the servers' 4 096-event buffers, a missing delivery is a bug.
    if missing > 0 {
        return Err(format!("{missing} deliveries missing").into());
    }
    Ok(())
}

/// A server under test, in a child process of its own unless attached to.
struct Server {
    process: Option<ServerProcess>,
    addr: SocketAddr,
    /// For a server that speaks TLS: a client that trusts its certificate.
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A client's connection: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Server {
    /// Starts a server of `kind` on `tables` file tables.
    async fn start(kind: &str, tables: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let tables = format!("tables={tables}");
        if !kind.ends_with("-tls") {
            let process = ServerProcess::start(|addr| {
                ["serve", kind, addr, &tables].map(str::to_owned).to_vec()
            })
            .await?;
            return Ok(Self {
                addr: process.addr,
                process: Some(process),
                tls: None,
            });
        }
        let certificate =
            std::env::temp_dir().join(format!("fanout-loadtest-{}-{kind}.pem", std::process::id()));
        let path = format!(
            "certificate={}",
            certificate.to_str().ok_or("a temporary path")?
        );
        let process = ServerProcess::start(|addr| {
            ["serve", kind, addr, &path, &tables]
                .map(str::to_owned)
                .to_vec()
        })
        .await?;
        let pem = std::fs::read(&certificate)?;
        let _ = std::fs::remove_file(&certificate);
        Ok(Self {
            addr: process.addr,
            process: Some(process),
            tls: Some(tls::connector(&pem)?),
        })
    }

    /// A new connection to the server.
    async fn connect(&self) -> Result<Box<dyn Io>, Box<dyn std::error::Error>> {
        self.connect_from(0).await
    }

    /// A new connection to the server, from the `n`th source address in turn when the
    /// server is on the IPv4 loopback.
    async fn connect_from(&self, n: usize) -> Result<Box<dyn Io>, Box<dyn std::error::Error>> {
        let tcp = match self.addr {
            SocketAddr::V4(addr) if addr.ip().is_loopback() => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                let last = 1 + (n % usize::from(SOURCES)) as u8;
                bind_address_only(&socket)?;
                socket.bind(SocketAddr::from(([127, 0, 0, last], 0)))?;
                socket.connect(self.addr).await?
            }
            _ => TcpStream::connect(self.addr).await?,
        };
        let Some(connector) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
        Ok(Box::new(connector.connect(name, tcp).await?))
    }

    /// The server's user + system CPU time.
    fn cpu(&self) -> Duration {
        self.process
            .as_ref()
            .map_or(Duration::ZERO, |process| cpu_time(&process.pid()))
    }

    /// The server's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        self.process
            .as_ref()
            .map_or(0, |process| process::rss_kib(&process.pid()))
    }

    /// Sends a control request and returns the body of the answer.
    async fn control(&self, path: &str) -> Result<String, Box<dyn std::error::Error>> {
        let stream = self.connect().await?;
        load::control_on(stream, path).await
    }

    async fn wait_subscribers(&self, count: usize) -> Result<(), Box<dyn std::error::Error>> {
        let deadline = Instant::now() + PHASE_LIMIT;
        loop {
            if self
                .control("/subscribers")
                .await?
                .parse::<usize>()
                .unwrap_or(0)
                >= count
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{count} clients did not all subscribe").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Makes `socket`'s bind take only the source address and leave the port to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`), which picks one free for the whole address pair and may
/// reuse one in TIME_WAIT: a bind alone takes a port no other socket of that address
/// holds, and the TIME_WAITs a crowd leaves would hold most of them for a minute.
fn bind_address_only(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a pointer to a live one, on a socket we own.
    #[allow(unsafe_code)]
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of_val(&on) as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The user + system CPU time of process `pid` ("self" for this one).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime is the 12th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the clients of a phase saw. Each client records into its own list, so that
/// clients share nothing but a counter while the load runs.
#[derive(Default)]
struct Seen {
    delivered: AtomicU64,
    /// What the clients read after their handshakes, framing included.
    bytes: AtomicU64,
    clients: Mutex<Vec<Arc<Mutex<Vec<Arrival>>>>>,
}

/// One delivery: when its event was published and when the client read it (ns).
#[derive(Clone, Copy, Default)]
struct Arrival {
    sent: u64,
    arrived: u64,
}

impl Seen {
    /// A new client's list.
    fn client(&self, events: usize) -> Arc<Mutex<Vec<Arrival>>> {
        let list = Arc::new(Mutex::new(warm(events, Arrival::default())));
        self.clients
            .lock()
            .expect("not poisoned")
            .push(Arc::clone(&list));
        list
    }

    /// Records one delivery into `batch` (the deliveries of one read); `flush` hands a
    /// batch to the client's list.
    fn record(batch: &mut Vec<Arrival>, payload: &[u8], arrived: u64) {
        let sent: u64 = std::str::from_utf8(payload.get(..20).unwrap_or_default())
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(arrived);
        batch.push(Arrival { sent, arrived });
    }

    fn flush(&self, list: &Mutex<Vec<Arrival>>, batch: &mut Vec<Arrival>) {
        if batch.is_empty() {
            return;
        }
        list.lock().expect("not poisoned").extend_from_slice(batch);
        self.delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }

    /// Which clients got fewer than `each` events, when any did: how many, and the fewest
    /// one got, to tell one stuck connection from losses spread over all.
    fn short(&self, each: usize) -> String {
        let counts: Vec<usize> = self
            .clients
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|list| list.lock().expect("not poisoned").len())
            .filter(|&count| count < each)
            .collect();
        match counts.iter().min() {
            Some(fewest) => format!(
                " ({} clients short, the fewest got {fewest} of {each})",
                counts.len()
            ),
            None => String::new(),
        }
    }

    /// Every delivery's latency, and for every event the time between its first and its
    /// last delivery (ns).
    fn results(&self) -> (Vec<u64>, Vec<u64>) {
        let mut latencies = Vec::new();
        let mut events: HashMap<u64, (u64, u64)> = HashMap::new();
        for list in self.clients.lock().expect("not poisoned").iter() {
            for arrival in list.lock().expect("not poisoned").iter() {
                latencies.push(arrival.arrived.saturating_sub(arrival.sent));
                let (first, last) = events
                    .entry(arrival.sent)
                    .or_insert((arrival.arrived, arrival.arrived));
                *first = (*first).min(arrival.arrived);
                *last = (*last).max(arrival.arrived);
            }
        }
        let spreads = events.values().map(|(first, last)| last - first).collect();
        (latencies, spreads)
    }
}

/// Opens `count` clients of `transport` that record what they receive (events of `size`
/// bytes are the quickest to parse), each with its memory for `events` deliveries
/// written once already: otherwise the page faults of the
/// first phase of a run land in its measurement, and whichever server goes first looks
/// slower. One after another, or in a storm (`storm=1`).
async fn clients(
    server: &Server,
    transport: &str,
    count: usize,
    events: usize,
    size: usize,
    topics: usize,
    seen: &Arc<Seen>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Box<dyn std::error::Error>> {
    let mut tasks = Vec::with_capacity(count);
    // Room for every event a client expects, framing included, within bounds.
    let read = events.saturating_mul(size + 64).clamp(READ_MIN, READ);
    // A storm: every socket connects first, then every request goes out, as when all
    // the clients of a restarted server come back at once.
    let mut streams = Vec::new();
    if STORM.load(Ordering::Relaxed) {
        for i in 0..count {
            streams.push(Some(server.connect_from(i).await?));
        }
    }
    for i in 0..count {
        let seen = Arc::clone(seen);
        let list = seen.client(events);
        let (mut buffer, mut pending, mut batch) = if events == 0 {
            (vec![0; read], Vec::new(), Vec::new())
        } else {
            let mut buffer = warm(read, 0);
            buffer.resize(read, 0);
            // A read holds at most one delivery per 64 bytes or so.
            (buffer, warm(read, 0), warm(read / 64, Arrival::default()))
        };
        let mut stream = match streams.get_mut(i).and_then(Option::take) {
            Some(stream) => stream,
            None => server.connect_from(i).await?,
        };
        let own = PER_CLIENT.load(Ordering::Relaxed).then_some(i);
        stream
            .write_all(stream_request(transport, topics, own).as_bytes())
            .await?;
        let task = match transport {
            "ws" => {
                // A minimal reader of server frames (unmasked, RFC 6455 section 5.2), so
                // that the clients, which share the machine with the server, cost little.
                tokio::spawn(async move {
                    let mut upgraded = false;
                    let mut inflater = None;
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        // Everything this read returned arrived now.
                        let arrived = now_nanos();
                        pending.extend_from_slice(&buffer[..n]);
                        if !upgraded {
                            let Some(end) = find(&pending, b"\r\n\r\n") else {
                                continue;
                            };
                            pending.drain(..end + 4);
                            upgraded = true;
                            seen.bytes
                                .fetch_add(pending.len() as u64, Ordering::Relaxed);
                        } else {
                            seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        let mut start = 0;
                        let mut pongs = Vec::new();
                        while let Some((opcode, payload, next)) = ws_frame(&pending[start..]) {
                            match opcode {
                                1 | 2 => Seen::record(&mut batch, payload, arrived),
                                // Compressed (RSV1): inflated, as a browser would.
                                0x41 | 0x42 => {
                                    let inflater = inflater.get_or_insert_with(Inflater::new);
                                    Seen::record(&mut batch, inflater.inflate(payload), arrived);
                                }
                                // Answered as a browser would, or a connection that outlives
                                // the server's ping interval plus its timeout is closed.
                                9 => pongs.extend(load::pong(payload)),
                                _ => {}
                            }
                            start += next;
                        }
                        pending.drain(..start);
                        seen.flush(&list, &mut batch);
                        if !pongs.is_empty() && stream.write_all(&pongs).await.is_err() {
                            break;
                        }
                    }
                })
            }
            _ => {
                tokio::spawn(async move {
                    let mut head = true;
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        // Everything this read returned arrived now.
                        let arrived = now_nanos();
                        if !std::mem::take(&mut head) {
                            seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        pending.extend_from_slice(&buffer[..n]);
                        // Chunk framing aside, every event is one `data:` line. Its end is
                        // looked for where an event of `size` bytes ends first, so that
                        // the payload is not scanned; any other length is found by a scan.
                        let mut start = 0;
                        while let Some(at) = find(&pending[start..], b"data:") {
                            let from = start + at + 5;
                            let end = match pending.get(from + 1 + size) {
                                Some(b'\n') => Some(1 + size),
                                _ => find(&pending[from..], b"\n"),
                            };
                            let Some(end) = end else {
                                break;
                            };
                            Seen::record(
                                &mut batch,
                                pending[from..from + end].trim_ascii_start(),
                                arrived,
                            );
                            start = from + end;
                        }
                        pending.drain(..start);
                        seen.flush(&list, &mut batch);
                    }
                })
            }
        };
        tasks.push(task);
    }
    // The hub counts a subscription per topic.
    server.wait_subscribers(count * topics).await?;
    Ok(tasks)
}

/// The request that opens a stream of `transport` ("ws" or "sse") on the load topic, or
/// on `topics` of them, or on the `own`th client's topic of its own. A WebSocket client
/// offers permessage-deflate as browsers do.
fn stream_request(transport: &str, topics: usize, own: Option<usize>) -> String {
    let target = if let Some(own) = own {
        format!("/events/{}", server::own_topic(own))
    } else if topics == 1 {
        format!("/events/{TOPIC}")
    } else {
        let query: Vec<String> = (0..topics)
            .map(|i| format!("topic={}", server::topic(i, topics)))
            .collect();
        format!("/events/?{}", query.join("&"))
    };
    match transport {
        "ws" => format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ),
        _ => format!("GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"),
    }
}

/// Room for `capacity` items, its memory written once, so that no page fault is left
/// for the measurement.
fn warm<T: Clone>(capacity: usize, item: T) -> Vec<T> {
    // Not `vec![item; capacity]`, which takes zeroed memory from the system untouched.
    let mut items = Vec::with_capacity(capacity);
    items.resize(capacity, item);
    items.clear();
    items
}

/// Where `needle` first occurs in `haystack`. Scanning for its first byte, rather than
/// comparing every window, keeps the SSE clients' parsing cheaper than the servers' work.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|&byte| byte == first) {
        let start = from + at;
        if haystack[start + 1..].starts_with(rest) {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

async fn wait_delivered(seen: &Seen, expected: u64) -> Duration {
    let start = Instant::now();
    while seen.delivered.load(Ordering::Relaxed) < expected && start.elapsed() < PHASE_LIMIT {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

fn percentiles(mut values: Vec<u64>) -> String {
    if values.is_empty() {
        return "no deliveries".into();
    }
    values.sort_unstable();
    let at = |p: f64| Duration::from_nanos(values[((values.len() - 1) as f64 * p) as usize]);
    format!("p50 {:?} p99 {:?} max {:?}", at(0.5), at(0.99), at(1.0))
}

async fn burst(
    server: &Server,
    transport: &str,
    options: &Options,
) -> Result<(String, u64), Box<dyn std::error::Error>> {
    let seen = Arc::new(Seen::default());
    let tasks = clients(
        server,
        transport,
        options.clients,
        options.broadcasts,
        options.size,
        options.topics,
        &seen,
    )
    .await?;
    let expected = (options.clients * options.broadcasts) as u64;
    let cpu = server.cpu();
    let clients_cpu = cpu_time("self");
    let start = Instant::now();
    let per_client = if options.per_client {
        options.clients
    } else {
        0
    };
    server
        .control(&format!(
            "/burst?count={}&size={}&topics={}&json={}&per_client={per_client}",
            options.broadcasts,
            options.size,
            options.topics,
            u8::from(options.json)
        ))
        .await?;
    wait_delivered(&seen, expected).await;
    let elapsed = start.elapsed();
    let cpu = server.cpu().saturating_sub(cpu);
    let clients_cpu = cpu_time("self").saturating_sub(clients_cpu);
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    let delivered = seen.delivered.load(Ordering::Relaxed);
    let missing = expected - delivered.min(expected);
    let (latencies, _) = seen.results();
    let per_delivery = |cpu: Duration| cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
    let line = format!(
        "{:>10.0} deliveries/s  {:>6.3} µs CPU/delivery (clients {:.3})  {:.0} B/delivery  {}  \
         missing {missing}{}",
        delivered as f64 / elapsed.as_secs_f64(),
        per_delivery(cpu),
        per_delivery(clients_cpu),
        seen.bytes.load(Ordering::Relaxed) as f64 / delivered.max(1) as f64,
        percentiles(latencies),
        seen.short(options.broadcasts),
    );
    Ok((line, missing))
}

async fn steady(
    server: &Server,
    transport: &str,
    options: &Options,
) -> Result<(String, u64), Box<dyn std::error::Error>> {
    const RATE: usize = 100;
    const SECONDS: usize = 10;
    let seen = Arc::new(Seen::default());
    let tasks = clients(
        server,
        transport,
        options.clients,
        RATE * SECONDS,
        options.size,
        options.topics,
        &seen,
    )
    .await?;
    let expected = (options.clients * RATE * SECONDS) as u64;
    let cpu = server.cpu();
    server
        .control(&format!(
            "/steady?rate={RATE}&seconds={SECONDS}&size={}&topics={}",
            options.size, options.topics
        ))
        .await?;
    wait_delivered(&seen, expected).await;
    let cpu = server.cpu().saturating_sub(cpu);
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    let missing = expected - seen.delivered.load(Ordering::Relaxed).min(expected);
    let (latencies, spreads) = seen.results();
    let line = format!(
        "latency {}  first-to-last {}  server CPU {:.2} µs/delivery  missing {missing}{}",
        percentiles(latencies),
        percentiles(spreads),
        cpu.as_secs_f64() * 1e6 / expected.max(1) as f64,
        seen.short(RATE * SECONDS),
    );
    Ok((line, missing))
}

async fn idle(
    server: &Server,
    transport: &str,
    options: &Options,
) -> Result<(String, u64), Box<dyn std::error::Error>> {
    let seen = Arc::new(Seen::default());
    // Each connection gets a few events and then goes quiet, as the connections of a real
    // server do: what a connection keeps after activity is what is measured.
    let events = options.idle_events;
    let deliver = |connections: usize, expected: u64| {
        let seen = Arc::clone(&seen);
        async move {
            for _ in 0..events {
                server
                    .control(&format!(
                        "/burst?count=1&size={}&topics={}",
                        options.size, options.topics
                    ))
                    .await?;
            }
            let expected = expected + (connections * events) as u64;
            wait_delivered(&seen, expected).await;
            let delivered = seen.delivered.load(Ordering::Relaxed);
            if delivered < expected {
                return Err(format!("idle: {} of {expected} deliveries", delivered).into());
            }
            Ok::<u64, Box<dyn std::error::Error>>(expected)
        }
    };
    // Settle the server's allocations with a few connections first.
    let warm = clients(
        server,
        transport,
        10,
        0,
        options.size,
        options.topics,
        &seen,
    )
    .await?;
    let delivered = deliver(10, 0).await?;
    let before = server.rss_kib();
    let tasks = clients(
        server,
        transport,
        options.idle,
        0,
        options.size,
        options.topics,
        &seen,
    )
    .await?;
    // Every one of them, beside the warm ones, before the events go out.
    server
        .wait_subscribers((options.idle + 10) * options.topics)
        .await?;
    deliver(options.idle + 10, delivered).await?;
    let after = server.rss_kib();
    warm.iter()
        .chain(&tasks)
        .for_each(tokio::task::JoinHandle::abort);
    let line = format!(
        "{:.2} KiB per idle connection ({} connections after {events} events each, RSS {} -> {} KiB)",
        (after.saturating_sub(before)) as f64 / options.idle.max(1) as f64,
        options.idle,
        before,
        after
    );
    Ok((line, 0))
}

async fn crowd(
    server: &Arc<Server>,
    options: &Options,
    tables: usize,
) -> Result<(String, u64), Box<dyn std::error::Error>> {
    let seen = Arc::new(Seen::default());
    // The clients take their sockets in file tables of their own, a share each.
    let tables = tokio::task::spawn_blocking(move || Tables::start(tables)).await??;
    let count = tables.handles().len();
    let before = server.rss_kib();
    let cpu = server.cpu();
    let started = Instant::now();
    let mut opening = Vec::with_capacity(count);
    for (t, runtime) in tables.handles().iter().enumerate() {
        let share = |total: usize| total / count + usize::from(t < total % count);
        let websockets = share(options.crowd / 2);
        let streams = share(options.crowd - options.crowd / 2);
        let (server, seen, size) = (Arc::clone(server), Arc::clone(&seen), options.size);
        opening.push(runtime.spawn(async move {
            let mut tasks = clients(&server, "ws", websockets, 1, size, 1, &seen)
                .await
                .map_err(|error| error.to_string())?;
            tasks.extend(
                clients(&server, "sse", streams, 1, size, 1, &seen)
                    .await
                    .map_err(|error| error.to_string())?,
            );
            Ok::<_, String>(tasks)
        }));
    }
    let mut tasks = Vec::with_capacity(options.crowd);
    for opened in opening {
        tasks.extend(opened.await??);
    }
    server.wait_subscribers(options.crowd).await?;
    let opened = started.elapsed();
    let opening_cpu = server.cpu().saturating_sub(cpu);
    let after = server.rss_kib();
    let (cpu, clients_cpu) = (server.cpu(), cpu_time("self"));
    server
        .control(&format!("/burst?count=1&size={}&topics=1", options.size))
        .await?;
    wait_delivered(&seen, options.crowd as u64).await;
    let broadcast_cpu = server.cpu().saturating_sub(cpu);
    let clients_cpu = cpu_time("self").saturating_sub(clients_cpu);
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    // Each table closes its own sockets, on its own thread.
    tokio::task::spawn_blocking(move || drop(tables)).await?;
    let delivered = seen.delivered.load(Ordering::Relaxed);
    let missing = (options.crowd as u64).saturating_sub(delivered);
    let (latencies, _) = seen.results();
    let line = format!(
        "{} connections open in {:.1} s ({:.0}/s, clients on {count} file tables), \
         server CPU {:.0} µs per connection opened; server RSS {before} -> {after} KiB, {:.2} KiB per connection; one broadcast to all: \
         {}, server CPU {:.1} µs per delivery (the clients' {:.1}); missing {missing}",
        options.crowd,
        opened.as_secs_f64(),
        options.crowd as f64 / opened.as_secs_f64().max(1e-9),
        opening_cpu.as_secs_f64() * 1e6 / options.crowd.max(1) as f64,
        after.saturating_sub(before) as f64 / options.crowd.max(1) as f64,
        percentiles(latencies),
        broadcast_cpu.as_secs_f64() * 1e6 / options.crowd.max(1) as f64,
        clients_cpu.as_secs_f64() * 1e6 / options.crowd.max(1) as f64,
    );
    Ok((line, missing))
}

async fn stall(
    server: &Server,
    transport: &str,
    options: &Options,
) -> Result<(String, u64), Box<dyn std::error::Error>> {
    // Clients that open their stream and never read from it again.
    let mut stalled = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        let mut stream = server.connect().await?;
        stream
            .write_all(stream_request(transport, options.topics, None).as_bytes())
            .await?;
        stalled.push(stream);
    }
    server
        .wait_subscribers(options.clients * options.topics)
        .await?;
    let before = server.rss_kib();
    server
        .control(&format!(
            "/burst?count={}&size={}&topics={}",
            options.broadcasts, options.size, options.topics
        ))
        .await?;
    // The connections take their events after the broadcasts return: wait until the
    // server's memory has stopped growing for a second.
    let deadline = Instant::now() + PHASE_LIMIT;
    let (mut after, mut steady_for) = (server.rss_kib(), 0);
    while steady_for < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = server.rss_kib();
        steady_for = if now > after { 0 } else { steady_for + 1 };
        after = after.max(now);
    }
    drop(stalled);
    let events = (options.broadcasts * options.size / 1024) as u64;
    let line = format!(
        "server RSS {before} -> {after} KiB with {} stalled clients ({:.1} KiB each beyond the \
         {events} KiB of events broadcast)",
        options.clients,
        after.saturating_sub(before).saturating_sub(events) as f64 / options.clients.max(1) as f64,
    );
    Ok((line, 0))
}

#[path = "support/load.rs"]
mod load;
#[path = "../tests/support/process.rs"]
mod process;
use load::{ServerProcess, ws_frame};

#[path = "support/tables.rs"]
mod tables;
use tables::Tables;

/// Raises this process's open-file limit as far as it goes; returns the limit in force.
fn raise_fd_limit() -> u64 {
    process::raise_fd_limit(u64::MAX)
}

/// The two servers under test, with the same control endpoints.
mod server {
    use std::collections::HashMap;
    use std::future::IntoFuture;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
    use axum::extract::{FromRequestParts, Path, Request, State};
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::serve::ListenerExt;
    use futures_util::stream;
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::runtime::Handle;
    use tokio::sync::broadcast;
    use tower_fanout::{Hub, StreamLayer};

    use super::{Infallible, TOPIC, now_nanos, raise_fd_limit};

    /// The hand-rolled hub: one broadcast channel per topic behind one lock.
    type Topics = Arc<Mutex<HashMap<String, broadcast::Sender<String>>>>;

    #[derive(Clone)]
    enum Publisher {
        Hub(Hub),
        Baseline(Topics),
    }

    impl Publisher {
        fn publish(&self, topic: &str, payload: String) {
            match self {
                Self::Hub(hub) => {
                    hub.broadcast(topic, payload);
                }
                Self::Baseline(topics) => {
                    if let Some(sender) = topics.lock().expect("not poisoned").get(TOPIC) {
                        let _ = sender.send(payload);
                    }
                }
            }
        }

        fn subscribers(&self) -> usize {
            match self {
                Self::Hub(hub) => hub.stats().subscribers,
                Self::Baseline(topics) => topics
                    .lock()
                    .expect("not poisoned")
                    .get(TOPIC)
                    .map_or(0, broadcast::Sender::receiver_count),
            }
        }
    }

    pub(super) async fn run(
        kind: &str,
        addr: SocketAddr,
        certificate: Option<std::path::PathBuf>,
        runtimes: &[Handle],
    ) -> Result<(), Box<dyn std::error::Error>> {
        raise_fd_limit();
        // Built with the metrics feature, the server records into a Prometheus recorder,
        // as a deployment would: the burst then shows what metrics cost.
        #[cfg(feature = "metrics")]
        let _metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        // Made before the listener is bound: once it accepts, the certificate is there.
        let acceptor = certificate
            .as_deref()
            .map(super::tls::acceptor)
            .transpose()?;
        let app = match kind {
            "bare" => {
                let streams = Arc::default();
                return on_each(addr, runtimes, move |listener| {
                    super::bare::run(listener, Arc::clone(&streams))
                })
                .await;
            }
            "crate" | "crate-axum" | "crate-tls" | "crate-deflate" => {
                let hub = Hub::builder().buffer(4096).build();
                // `/events/{topic}`, or `/events/?topic=..&topic=..` for several.
                let mut layer = StreamLayer::new(hub.clone())
                    .path("/events/")
                    .max_topics(4096)
                    .topics(|parts| {
                        let named: Vec<String> = parts
                            .uri
                            .query()
                            .map(|query| {
                                form_urlencoded::parse(query.as_bytes())
                                    .map(|(_, topic)| topic.into_owned())
                                    .collect()
                            })
                            .unwrap_or_default();
                        Ok(if named.is_empty() {
                            vec![parts.uri.path().trim_start_matches("/events/").to_owned()]
                        } else {
                            named
                        })
                    });
                if kind == "crate-deflate" {
                    layer = layer.compression(tower_fanout::Compression::new());
                }
                let app = control(Publisher::Hub(hub)).layer(layer);
                if kind != "crate-axum" {
                    if kind == "crate-tls" && acceptor.is_none() {
                        return Err("a certificate path".into());
                    }
                    return on_each(addr, runtimes, move |listener| {
                        let served = tower_fanout::serve(listener, app.clone());
                        // Both are the same boxed future.
                        let served = match acceptor.clone() {
                            Some(acceptor) => served
                                .with_transport(move |tcp| acceptor.accept(tcp))
                                .into_future(),
                            None => served.into_future(),
                        };
                        async move {
                            served.await;
                            Ok(())
                        }
                    })
                    .await;
                }
                app
            }
            "baseline" => {
                let topics = Topics::default();
                let streams = Router::new()
                    .route("/events/{topic}", get(baseline_stream))
                    .with_state(Arc::clone(&topics));
                control(Publisher::Baseline(topics)).merge(streams)
            }
            other => return Err(format!("unknown server {other}").into()),
        };
        on_each(addr, runtimes, move |listener| {
            // Small frames go out at once: without TCP_NODELAY, Nagle's algorithm holds
            // each one until the previous is acknowledged, which a delayed ACK makes up
            // to 40 ms.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app.clone()).into_future()
        })
        .await
    }

    /// Runs `serve` on a listener at `addr` on each of `runtimes`, bound on the runtime's
    /// thread (in its file table) and sharing the port (`SO_REUSEPORT`) when there are
    /// several, until one of them ends. The backlog is tokio's `TcpListener::bind`'s.
    async fn on_each<F, S>(
        addr: SocketAddr,
        runtimes: &[Handle],
        serve: F,
    ) -> Result<(), Box<dyn std::error::Error>>
    where
        F: Fn(TcpListener) -> S + Clone + Send + 'static,
        S: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let shared = runtimes.len() > 1;
        let mut servers = tokio::task::JoinSet::new();
        for runtime in runtimes {
            let serve = serve.clone();
            servers.spawn_on(
                async move {
                    let socket = if addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.set_reuseaddr(true)?;
                    socket.set_reuseport(shared)?;
                    socket.bind(addr)?;
                    serve(socket.listen(1024)?).await
                },
                runtime,
            );
        }
        match servers.join_next().await {
            Some(ended) => Ok(ended??),
            None => Ok(()),
        }
    }

    fn control(publisher: Publisher) -> Router {
        Router::new()
            .route(
                "/subscribers",
                post(|State(p): State<Publisher>| async move { p.subscribers().to_string() }),
            )
            .route("/burst", post(burst))
            .route("/steady", post(steady))
            .with_state(publisher)
    }

    pub(super) fn param(uri: &http::Uri, name: &str) -> usize {
        uri.query()
            .and_then(|query| form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name))
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0)
    }

    /// A payload of `size` bytes that starts with the time it was made: JSON-like records
    /// after it when `json`, a run of one letter otherwise.
    pub(super) fn payload(size: usize, json: bool) -> String {
        let now = now_nanos();
        let mut payload = format!("{now:020}");
        if json {
            // Numbers that change from event to event, as prices and counts do.
            let mut state = now | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            payload.push_str(",[");
            while payload.len() + 80 < size {
                let value = next();
                payload.push_str(&format!(
                    r#"{{"id":{},"user":"user-{}","side":"{}","price":{}.{:02},"qty":{}}},"#,
                    value % 100_000,
                    value % 997,
                    if value & 1 == 0 { "buy" } else { "sell" },
                    100 + value % 900,
                    (value >> 8) % 100,
                    (value >> 16) % 1000,
                ));
            }
            payload.push_str("{}]");
        }
        let fill = size.saturating_sub(payload.len());
        payload.extend(std::iter::repeat_n(if json { ' ' } else { 'x' }, fill));
        payload
    }

    /// The topic of the `i`th client when each has its own (`per_client=1`).
    pub(super) fn own_topic(i: usize) -> String {
        format!("{TOPIC}-c{i}")
    }

    /// The name of the `i`th of `topics` topics that clients hold.
    pub(super) fn topic(i: usize, topics: usize) -> String {
        if topics <= 1 {
            TOPIC.to_owned()
        } else {
            format!("{TOPIC}-{i}")
        }
    }

    /// Publishes `count` events as fast as it can, round robin over the clients' topics.
    async fn burst(State(publisher): State<Publisher>, uri: http::Uri) -> &'static str {
        let (size, topics) = (param(&uri, "size"), param(&uri, "topics").max(1));
        let json = param(&uri, "json") == 1;
        // Every event to each client's own topic, or round robin over the shared ones.
        let per_client = param(&uri, "per_client");
        if per_client > 0 {
            let names: Vec<String> = (0..per_client).map(own_topic).collect();
            for _ in 0..param(&uri, "count") {
                for name in &names {
                    publisher.publish(name, payload(size, json));
                }
            }
            return "done";
        }
        let names: Vec<String> = (0..topics).map(|i| topic(i, topics)).collect();
        for i in 0..param(&uri, "count") {
            publisher.publish(&names[i % topics], payload(size, json));
        }
        "done"
    }

    async fn steady(State(publisher): State<Publisher>, uri: http::Uri) -> &'static str {
        let (rate, seconds, size) = (
            param(&uri, "rate").max(1),
            param(&uri, "seconds"),
            param(&uri, "size"),
        );
        // The first topic is busy, the clients' others stay quiet.
        let busy = topic(0, param(&uri, "topics").max(1));
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
        for _ in 0..rate * seconds {
            ticks.tick().await;
            publisher.publish(&busy, payload(size, param(&uri, "json") == 1));
        }
        "done"
    }

    /// What a hand-rolled endpoint looks like: WebSocket if the request upgrades, SSE if not.
    async fn baseline_stream(
        State(topics): State<Topics>,
        Path(topic): Path<String>,
        request: Request,
    ) -> Response {
        let receiver = topics
            .lock()
            .expect("not poisoned")
            .entry(topic)
            .or_insert_with(|| broadcast::channel(4096).0)
            .subscribe();
        let (mut parts, _body) = request.into_parts();
        match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade.on_upgrade(move |socket| baseline_socket(socket, receiver)),
            Err(_) => {
                let events = stream::unfold(receiver, |mut receiver| async move {
                    loop {
                        match receiver.recv().await {
                            Ok(data) => {
                                return Some((
                                    Ok::<_, Infallible>(Event::default().data(data)),
                                    receiver,
                                ));
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                });
                Sse::new(events)
                    .keep_alive(KeepAlive::default())
                    .into_response()
            }
        }
    }

    async fn baseline_socket(mut socket: WebSocket, mut receiver: broadcast::Receiver<String>) {
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Ok(data) => {
                        if socket.send(Message::Text(data.into())).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                incoming = socket.recv() => if !matches!(incoming, Some(Ok(_))) { return },
            }
        }
    }
}

/// The floor to measure against: no hub, no HTTP or WebSocket library. Each event is
/// encoded once, as a WebSocket frame and as an SSE chunk, and appended to every
/// connection's queue; each connection writes whatever its queue holds in one write.
/// Requests are read by hand, and a connection stays listed after it closes: each phase
/// has a server of its own.
mod bare {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    use super::server::{param, payload};

    #[derive(Default)]
    struct Queue {
        bytes: Mutex<Vec<u8>>,
        ready: Notify,
    }

    #[derive(Default)]
    pub(super) struct Streams {
        ws: Mutex<Vec<Arc<Queue>>>,
        sse: Mutex<Vec<Arc<Queue>>>,
    }

    impl Streams {
        fn publish(&self, payload: &str) {
            let mut frame = vec![0x81];
            match u16::try_from(payload.len()) {
                Ok(len @ 0..=125) => frame.push(len as u8),
                Ok(len) => {
                    frame.push(126);
                    frame.extend_from_slice(&len.to_be_bytes());
                }
                Err(_) => {
                    frame.push(127);
                    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
                }
            }
            frame.extend_from_slice(payload.as_bytes());
            let event = format!("data: {payload}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            for (list, bytes) in [(&self.ws, &frame[..]), (&self.sse, chunk.as_bytes())] {
                for queue in list.lock().expect("not poisoned").iter() {
                    queue
                        .bytes
                        .lock()
                        .expect("not poisoned")
                        .extend_from_slice(bytes);
                    queue.ready.notify_one();
                }
            }
        }

        fn count(&self) -> usize {
            self.ws.lock().expect("not poisoned").len()
                + self.sse.lock().expect("not poisoned").len()
        }
    }

    pub(super) async fn run(listener: TcpListener, streams: Arc<Streams>) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, Arc::clone(&streams)));
        }
    }

    async fn serve(mut stream: TcpStream, streams: Arc<Streams>) {
        let mut head = Vec::new();
        let mut buffer = [0; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let Some(Ok(uri)) = head.split(' ').nth(1).map(str::parse::<http::Uri>) else {
            return;
        };
        if uri.path().starts_with("/events/") {
            let (opening, list) = if head.contains("upgrade: websocket") {
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                    &streams.ws,
                )
            } else {
                (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                    &streams.sse,
                )
            };
            if stream.write_all(opening.as_bytes()).await.is_err() {
                return;
            }
            let queue = Arc::<Queue>::default();
            list.lock().expect("not poisoned").push(Arc::clone(&queue));
            let mut out = Vec::new();
            loop {
                queue.ready.notified().await;
                std::mem::swap(&mut out, &mut *queue.bytes.lock().expect("not poisoned"));
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        let size = param(&uri, "size");
        let body = match uri.path() {
            "/subscribers" => streams.count().to_string(),
            "/burst" => {
                for _ in 0..param(&uri, "count") {
                    streams.publish(&payload(size, param(&uri, "json") == 1));
                }
                "done".to_owned()
            }
            "/steady" => {
                let rate = param(&uri, "rate").max(1);
                let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
                for _ in 0..rate * param(&uri, "seconds") {
                    ticks.tick().await;
                    streams.publish(&payload(size, false));
                }
                "done".to_owned()
            }
            _ => String::new(),
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    }
}

/// TLS for the `crate-tls` server: a self-signed certificate for `localhost`, made by the
/// server and trusted by the clients, and HTTP/1.1 by ALPN.
mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, crypto::CryptoProvider};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    type Error = Box<dyn std::error::Error>;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Makes a certificate, writes it to `certificate` as PEM, and serves with it.
    pub(super) fn acceptor(certificate: &Path) -> Result<TlsAcceptor, Error> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        std::fs::write(certificate, made.cert.pem())?;
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// A client that trusts the certificate in `pem`.
    pub(super) fn connector(pem: &[u8]) -> Result<TlsConnector, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pem)?)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// A client's inflater for the messages a server compressed (RFC 7692, no context
/// takeover): one per connection, reset for each message.
struct Inflater {
    inflater: flate2::Decompress,
    out: Vec<u8>,
}

impl Inflater {
    fn new() -> Self {
        Self {
            inflater: flate2::Decompress::new(false),
            out: Vec::new(),
        }
    }

    /// The message `payload` holds, inflated; empty when it is not valid, which then
    /// counts as a delivery without a time.
    fn inflate(&mut self, payload: &[u8]) -> &[u8] {
        self.inflater.reset(false);
        self.out.clear();
        for input in [payload, &[0, 0, 0xff, 0xff][..]] {
            let mut input = input;
            loop {
                self.out.reserve(4 * input.len().max(1024));
                let before = self.inflater.total_in();
                let decompressed = self.inflater.decompress_vec(
                    input,
                    &mut self.out,
                    flate2::FlushDecompress::Sync,
                );
                if decompressed.is_err() {
                    self.out.clear();
                    return &self.out;
                }
                let taken = (self.inflater.total_in() - before) as usize;
                input = &input[taken..];
                if input.is_empty() && self.out.len() < self.out.capacity() {
                    break;
                }
            }
        }
        &self.out
    }
}

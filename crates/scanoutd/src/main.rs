//! `scanoutd`: serve a display to SPICE clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use scanoutd_demo::Scene;
use scanoutd_qemu::ConsoleSelection;
use scanoutd_ring::FrameBus;
use scanoutd_types::{Codec, EncoderFactory, NoEncoders};
use spice_server::{
    Compression, DisplaySource, Metrics, RateLimits, ServerConfig, SpiceServer, StreamMode,
    Ticketing,
};
use tokio::net::TcpListener;

mod gpu_path;
mod http;
mod qemu_source;
mod source;
mod source_metrics;

/// Stream a virtual machine's display to SPICE clients (remote-viewer, spice-gtk).
///
/// With no VM attached, `scanoutd serve` shows a built-in animated demo. Connect with
/// `remote-viewer spice://127.0.0.1:5900`.
#[derive(Parser, Debug)]
#[command(name = "scanoutd", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides this.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a display source to SPICE clients until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Render one demo frame to a PPM file: exactly the picture `serve` produced at capture
    /// time UNIX_MS when its animation started at START_UNIX_MS (exported as the metric
    /// scanoutd_source_start_unix_ms), assuming no input. Used to compare what a client shows
    /// with the source.
    RenderDemo(RenderArgs),
}

#[derive(Args, Debug)]
struct RenderArgs {
    #[arg(long, default_value = "1280x720", value_parser = parse_size, value_name = "WxH")]
    size: (u32, u32),
    #[arg(long, value_enum, default_value_t = SceneArg::Motion)]
    scene: SceneArg,
    /// When the source's animation clock was 0, Unix milliseconds.
    #[arg(long)]
    start_unix_ms: u64,
    /// The frame's capture time, Unix milliseconds (at or after --start-unix-ms).
    #[arg(long)]
    unix_ms: u64,
    /// Output file (binary PPM).
    #[arg(long)]
    out: PathBuf,
}

fn parse_bpp(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=24.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a number of bits per pixel from 0 to 24"
        )),
    }
}

/// Where the picture comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceSpec {
    Demo,
    /// QEMU's D-Bus display: on a D-Bus bus (`qemu-dbus:ADDRESS`, QEMU runs
    /// `-display dbus,addr=ADDRESS`), or peer to peer through QEMU's QMP socket
    /// (`qemu-qmp:PATH`, QEMU runs `-display dbus,p2p=yes`).
    Qemu(scanoutd_qemu::QemuEndpoint),
}

fn parse_source(s: &str) -> Result<SourceSpec, String> {
    if s == "demo" {
        return Ok(SourceSpec::Demo);
    }
    if let Some(addr) = s.strip_prefix("qemu-dbus:") {
        if addr.is_empty() {
            return Err(
                "qemu-dbus: needs a D-Bus address, e.g. qemu-dbus:unix:path=/run/vm1/bus".into(),
            );
        }
        return Ok(SourceSpec::Qemu(scanoutd_qemu::QemuEndpoint::Bus(
            addr.to_string(),
        )));
    }
    if let Some(path) = s.strip_prefix("qemu-qmp:") {
        if path.is_empty() {
            return Err(
                "qemu-qmp: needs the path of QEMU's QMP socket, e.g. qemu-qmp:/run/vm1/display.sock"
                    .into(),
            );
        }
        return Ok(SourceSpec::Qemu(scanoutd_qemu::QemuEndpoint::Qmp(
            PathBuf::from(path),
        )));
    }
    Err(format!(
        "unknown source {s:?}: expected demo, qemu-dbus:ADDRESS or qemu-qmp:PATH"
    ))
}

/// Which QEMU consoles to show (`--console`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConsoleArg {
    /// These consoles, each a monitor, in this order.
    List(Vec<u32>),
    /// Every graphic console, each a monitor.
    All,
}

fn parse_console(s: &str) -> Result<ConsoleArg, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok(ConsoleArg::All);
    }
    let mut ids = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let id: u32 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a console number: expected N, N,M,... or all"))?;
        if ids.contains(&id) {
            return Err(format!("console {id} is listed twice"));
        }
        ids.push(id);
    }
    if ids.len() > spice_server::MAX_DISPLAYS {
        return Err(format!(
            "{} consoles: at most {} can be shown",
            ids.len(),
            spice_server::MAX_DISPLAYS
        ));
    }
    Ok(ConsoleArg::List(ids))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnQemuExit {
    /// Keep serving the last picture and reconnect when QEMU comes back.
    Keep,
    /// End the service.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SceneArg {
    /// Moving shapes over a static desktop, and a timestamp strip that changes every frame.
    Motion,
    /// Nothing changes after the first frame (measures what an idle desktop costs).
    Still,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CompressionArg {
    /// LZ4 for clients that support it, raw bitmaps otherwise.
    Auto,
    /// Raw bitmaps only.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CodecArg {
    /// The best codec each client can decode (H.264, then VP8, VP9, H.265, MJPEG).
    Auto,
    H264,
    H265,
    Vp8,
    Vp9,
    Mjpeg,
    /// No video streams: everything goes out as lossless drawables.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StreamModeArg {
    /// Stream regions that keep changing; send the rest as drawables.
    Auto,
    /// Stream the whole display from the first frame (for sources that change everywhere).
    FullFrame,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address and port to accept SPICE clients on.
    #[arg(long, default_value = "127.0.0.1:5900", value_name = "HOST:PORT")]
    listen: SocketAddr,
    /// Where the picture comes from: `demo` (built in); `qemu-dbus:ADDRESS` for a QEMU
    /// started with `-display dbus,addr=ADDRESS` (a D-Bus bus address such as
    /// unix:path=/run/vm1/bus, where QEMU owns org.qemu); or `qemu-qmp:PATH` for a QEMU started
    /// with `-display dbus,p2p=yes -qmp unix:PATH,server=on,wait=off` (no bus: scanoutd hands
    /// QEMU a socket through QMP's add_client; QEMU serves one client per QMP socket, so give
    /// scanoutd a -qmp of its own).
    #[arg(long, default_value = "demo", value_parser = parse_source, value_name = "SOURCE")]
    source: SourceSpec,
    /// With a QEMU source: which consoles to show (default: the first graphic console).
    /// `N`: console N. `N,M,...`: several consoles, each a monitor of the client (SPICE
    /// display channels 0, 1, ... in this order; remote-viewer opens a window for each).
    /// `all`: every graphic console, each a monitor; they are counted when QEMU is first
    /// reached, so with `all` scanoutd waits for QEMU before it accepts clients. A QEMU
    /// `-device secondary-vga`, or a second `-device virtio-gpu-pci` / `max_outputs=2`,
    /// gives a guest a second console. Keys go to the first console shown, the pointer to
    /// the console it is on.
    #[arg(long, value_name = "N|N,M,...|all", value_parser = parse_console)]
    console: Option<ConsoleArg>,
    /// With a QEMU source: what to do when QEMU goes away [default: keep].
    #[arg(long, value_enum)]
    on_qemu_exit: Option<OnQemuExit>,
    /// With a QEMU source: the GPU path for GL guests (`-display dbus,gl=on`), whose scanouts
    /// are dmabufs imported with EGL and read back. `auto` uses a GPU that can import them
    /// when there is one, `require` refuses to start without, `off` never uses one
    /// [default: auto].
    #[arg(long, value_enum)]
    gpu: Option<gpu_path::GpuMode>,
    /// With a QEMU source: use the EGL device of this DRM node (the one QEMU renders on),
    /// e.g. /dev/dri/renderD128.
    #[arg(long, value_name = "PATH")]
    render_node: Option<PathBuf>,
    /// With the demo source: its scene [default: motion].
    #[arg(long, value_enum)]
    scene: Option<SceneArg>,
    /// With the demo source: its display size, WIDTHxHEIGHT (even numbers, at least 640x480)
    /// [default: 1280x720]. A QEMU guest's size comes from the guest.
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    size: Option<(u32, u32)>,
    /// Demo frames per second (1-240); for a QEMU source, the frame rate encoders expect.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=240))]
    fps: u32,
    /// Read the client password from this file (first line; at most 60 bytes).
    #[arg(long, value_name = "FILE", conflicts_with = "disable_ticketing")]
    password_file: Option<PathBuf>,
    /// Accept clients without a password. Only sensible on a trusted network or loopback.
    /// Without this, a password is required: --password-file or SCANOUTD_PASSWORD.
    #[arg(long)]
    disable_ticketing: bool,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (and the current frame at
    /// /snapshot.ppm).
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<SocketAddr>,
    /// Most clients connected at once.
    #[arg(long, default_value_t = 16)]
    max_clients: usize,
    /// Disconnect a client that reads nothing for this many seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    stall_timeout: u64,
    /// Image compression for display updates.
    #[arg(long, value_enum, default_value_t = CompressionArg::Auto)]
    compression: CompressionArg,
    /// Video codec for streams.
    #[arg(long, value_enum, default_value_t = CodecArg::Auto)]
    codec: CodecArg,
    /// When to use video streams.
    #[arg(long, value_enum, default_value_t = StreamModeArg::Auto)]
    stream_mode: StreamModeArg,
    /// Starting video bitrate per client, kbit/s (rate control moves it between the limits).
    #[arg(long, default_value_t = 8000, value_name = "KBPS")]
    bitrate: u32,
    /// Lowest video bitrate per client, kbit/s.
    #[arg(long, default_value_t = 300, value_name = "KBPS")]
    min_bitrate: u32,
    /// Highest video bitrate per client, kbit/s.
    #[arg(long, default_value_t = 20000, value_name = "KBPS")]
    max_bitrate: u32,
    /// Quality ceiling of a video stream, bits per pixel per frame: a stream never gets more
    /// bitrate than its size times the frame rate times this (MJPEG six times more), however
    /// fast the link; beyond it only bandwidth and CPU grow. 0 turns the ceiling off.
    #[arg(long, default_value_t = spice_server::DEFAULT_STREAM_MAX_BITS_PER_PIXEL, value_name = "BPP",
          value_parser = parse_bpp)]
    max_bits_per_pixel: f64,
    /// How long after capture a client shows a frame, ms (SPICE's multimedia-time margin):
    /// small keeps latency low; it must cover encode plus network time.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    mm_time_margin: u32,
    /// The most the server raises that margin to when frames arrive late (only for late
    /// frames the client would drop, i.e. MJPEG; a congested link cuts the bitrate instead,
    /// since a larger margin is only more delay).
    #[arg(long, default_value_t = spice_server::DEFAULT_MAX_MARGIN_MS, value_name = "MS")]
    max_display_delay: u32,
    /// Directory of encoder pipeline TOML files overriding or adding to the built-in ones.
    #[arg(long, value_name = "DIR")]
    pipelines: Option<PathBuf>,
}

/// Probe the encoders (unless streams are off) and say what was found.
fn encoders(args: &ServeArgs) -> Result<(Arc<dyn EncoderFactory>, Vec<Codec>)> {
    let wanted: Vec<Codec> = match args.codec {
        CodecArg::Off => return Ok((Arc::new(NoEncoders), Vec::new())),
        CodecArg::Auto => Codec::ALL.to_vec(),
        CodecArg::H264 => vec![Codec::H264],
        CodecArg::H265 => vec![Codec::H265],
        CodecArg::Vp8 => vec![Codec::Vp8],
        CodecArg::Vp9 => vec![Codec::Vp9],
        CodecArg::Mjpeg => vec![Codec::Mjpeg],
    };
    let specs = scanoutd_encode::load_specs(args.pipelines.as_deref())
        .context("loading encoder pipelines")?;
    tracing::info!(
        "probing {} encoder pipelines (a one-frame test encode each)…",
        specs.len()
    );
    let factory =
        scanoutd_encode::GstEncoderFactory::discover(&specs).context("starting GStreamer")?;
    let codecs = choose_codecs(args.codec, wanted, &factory.codecs())?;
    if codecs.is_empty() {
        return Ok((Arc::new(NoEncoders), Vec::new()));
    }
    tracing::info!(
        "video codecs in order of preference: {}",
        codecs
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((Arc::new(factory), codecs))
}

/// The codecs to offer: those wanted that an encoder can make. With `--codec auto` and no
/// working encoder the service still runs, lossless drawables only (with a warning); a codec
/// asked for by name that cannot be made is a start-up error.
fn choose_codecs(arg: CodecArg, wanted: Vec<Codec>, have: &[Codec]) -> Result<Vec<Codec>> {
    let codecs: Vec<Codec> = wanted.into_iter().filter(|c| have.contains(c)).collect();
    if !codecs.is_empty() {
        return Ok(codecs);
    }
    let available = if have.is_empty() {
        "none".to_string()
    } else {
        have.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
    };
    if arg == CodecArg::Auto {
        tracing::warn!(
            "no video encoder works here (available codecs: {available}): serving lossless \
             drawables only, no video streams; run scripts/install-deps for GStreamer's encoders"
        );
        return Ok(Vec::new());
    }
    bail!(
        "no usable encoder for --codec {arg:?} (available codecs: {available}); run \
         scripts/install-deps, pass --codec auto, or pass --codec off"
    );
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {s:?}"))?;
    let w: u32 = w.trim().parse().map_err(|e| format!("width {w:?}: {e}"))?;
    let h: u32 = h.trim().parse().map_err(|e| format!("height {h:?}: {e}"))?;
    Ok((w, h))
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn ticketing(args: &ServeArgs) -> Result<Ticketing> {
    if args.disable_ticketing {
        if !args.listen.ip().is_loopback() {
            tracing::warn!(
                "ticketing is disabled and {} is not a loopback address: anyone who can reach it can watch and control the display",
                args.listen
            );
        }
        return Ok(Ticketing::Disabled);
    }
    let pw = if let Some(f) = &args.password_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the password file {}", f.display()))?;
        text.lines().next().unwrap_or("").to_string()
    } else if let Ok(pw) = std::env::var("SCANOUTD_PASSWORD") {
        pw
    } else {
        bail!(
            "no password set: pass --password-file FILE, set SCANOUTD_PASSWORD, or pass --disable-ticketing to accept clients without one"
        );
    };
    Ticketing::password(pw).context("the client password")
}

/// The demo's size when `--size` is not given.
const DEMO_SIZE: (u32, u32) = (1280, 720);

/// Refuse options that do not apply to the chosen source, rather than ignore them.
fn check_source_options(args: &ServeArgs) -> Result<()> {
    let (misplaced, why): (Vec<&str>, &str) = match args.source {
        SourceSpec::Demo => (
            [
                ("--console", args.console.is_some()),
                ("--on-qemu-exit", args.on_qemu_exit.is_some()),
                ("--gpu", args.gpu.is_some()),
                ("--render-node", args.render_node.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, given)| given.then_some(name))
            .collect(),
            "a QEMU source (--source qemu-dbus:ADDRESS or qemu-qmp:PATH), not to the demo",
        ),
        SourceSpec::Qemu(_) => (
            [
                ("--size", args.size.is_some()),
                ("--scene", args.scene.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, given)| given.then_some(name))
            .collect(),
            "the demo source: a QEMU guest's size and picture come from the guest",
        ),
    };
    if misplaced.is_empty() {
        return Ok(());
    }
    let verb = if misplaced.len() == 1 {
        "applies"
    } else {
        "apply"
    };
    bail!("{} {verb} only to {why}", misplaced.join(", "));
}

async fn serve(args: ServeArgs) -> Result<()> {
    check_source_options(&args)?;
    let ticketing = ticketing(&args)?;
    let (width, height) = args.size.unwrap_or(DEMO_SIZE);
    let scene_arg = args.scene.unwrap_or(SceneArg::Motion);
    let scene = scene_of(scene_arg);
    if args.min_bitrate > args.max_bitrate || args.min_bitrate == 0 {
        bail!("--min-bitrate must be at least 1 and at most --max-bitrate");
    }
    let (encoders, codecs) = encoders(&args)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // How many displays (monitors) there are, and which consoles feed them.
    let (displays, selection) = match (&args.source, &args.console) {
        (SourceSpec::Demo, _) => (1, ConsoleSelection::First),
        (SourceSpec::Qemu(_), None) => (1, ConsoleSelection::First),
        (SourceSpec::Qemu(_), Some(ConsoleArg::List(ids))) => {
            (ids.len(), ConsoleSelection::List(ids.clone()))
        }
        (SourceSpec::Qemu(endpoint), Some(ConsoleArg::All)) => {
            let count = qemu_source::count_graphic_consoles(endpoint, spice_server::MAX_DISPLAYS);
            let n = tokio::select! {
                n = count => n?,
                r = tokio::signal::ctrl_c() => { r.context("waiting for SIGINT")?; tracing::info!("SIGINT: shutting down"); return Ok(()); }
                _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            };
            (n, ConsoleSelection::AllGraphic)
        }
    };
    let buses: Vec<FrameBus> = (0..displays.max(1)).map(|_| FrameBus::new()).collect();
    let bus = buses[0].clone();
    let mut demo = None;
    // The source's pointer per display, for sources that have one (the demo shows the default
    // arrow).
    let mut cursor_feeds = None;
    let mut source_metrics: Vec<Arc<dyn source_metrics::MetricsSource>> = Vec::new();
    let (input, start_unix_ms, mut source_task): (Arc<dyn scanoutd_types::InputSink>, u64, _) =
        match &args.source {
            SourceSpec::Demo => {
                let d = source::DemoRunner::start(width, height, scene, args.fps, bus.clone())
                    .context("starting the demo source")?;
                let input = d.input_sink();
                let start = d.start_unix_ms;
                demo = Some(d);
                let idle: tokio::task::JoinHandle<Result<()>> =
                    tokio::spawn(std::future::pending());
                (input, start, idle)
            }
            SourceSpec::Qemu(endpoint) => {
                let input = Arc::new(qemu_source::SwitchableInput::default());
                let (cursor_tx, cursor_rx): (Vec<_>, Vec<_>) = buses
                    .iter()
                    .map(|_| tokio::sync::watch::channel(scanoutd_types::CursorState::default()))
                    .unzip();
                cursor_feeds = Some(cursor_rx);
                let gpu = gpu_path::start(
                    args.gpu.unwrap_or(gpu_path::GpuMode::Auto),
                    args.render_node.clone(),
                )
                .await?;
                if let Some(g) = &gpu {
                    let g = Arc::clone(g);
                    source_metrics.push(Arc::new(source_metrics::GpuMetrics(Arc::new(
                        move || g.stats(),
                    ))));
                }
                let qemu_metrics = source_metrics::QemuMetrics::new(buses.len());
                source_metrics.push(qemu_metrics.clone());
                let task = tokio::spawn(qemu_source::run(qemu_source::QemuSource {
                    endpoint: endpoint.clone(),
                    consoles: selection,
                    buses: buses.clone(),
                    input: Arc::clone(&input),
                    cursors: cursor_tx,
                    gpu: gpu.map(|g| g as Arc<dyn scanoutd_qemu::DmabufReader>),
                    exit_on_close: args.on_qemu_exit == Some(OnQemuExit::Exit),
                    metrics: qemu_metrics,
                }));
                (input as Arc<dyn scanoutd_types::InputSink>, 0, task)
            }
        };

    let cfg = ServerConfig {
        ticketing,
        max_clients: args.max_clients.max(1),
        stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        compression: match args.compression {
            CompressionArg::Auto => Compression::Auto,
            CompressionArg::Off => Compression::Off,
        },
        stream_mode: match (args.codec, args.stream_mode) {
            (CodecArg::Off, _) => StreamMode::Off,
            (_, StreamModeArg::Auto) => StreamMode::Auto,
            (_, StreamModeArg::FullFrame) => StreamMode::FullFrame,
        },
        codecs,
        rate: RateLimits {
            start_kbps: args.bitrate.clamp(args.min_bitrate, args.max_bitrate),
            min_kbps: args.min_bitrate,
            max_kbps: args.max_bitrate,
        },
        source_fps: args.fps,
        stream_max_bits_per_pixel: args.max_bits_per_pixel,
        mm_time_margin_ms: args.mm_time_margin,
        mm_time_max_ms: args.max_display_delay.max(args.mm_time_margin),
        ..ServerConfig::default()
    };
    let metrics = Metrics::new();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let sources: Vec<DisplaySource> = match cursor_feeds {
        Some(feeds) => buses
            .iter()
            .zip(feeds)
            .map(|(b, c)| DisplaySource::with_cursor(b.clone(), c))
            .collect(),
        None => buses.iter().cloned().map(DisplaySource::new).collect(),
    };
    let server = SpiceServer::with_displays(cfg, sources, input, encoders, Arc::clone(&metrics))
        .context("the displays")?;

    source_metrics.push(Arc::new(source_metrics::StageMetrics(Arc::clone(&server))));
    let http = match args.metrics {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?;
            tracing::info!("metrics at http://{}/metrics", l.local_addr()?);
            Some(tokio::spawn(http::serve(
                l,
                http::Pages {
                    metrics: Arc::clone(&metrics),
                    buses: buses.clone(),
                    source_start_unix_ms: start_unix_ms,
                    sources: source_metrics,
                },
            )))
        }
        None => None,
    };

    match &args.source {
        SourceSpec::Demo => tracing::info!(
            "serving the {:?} demo ({width}x{height} at {} fps) on spice://{}",
            scene_arg,
            args.fps,
            listener.local_addr()?
        ),
        SourceSpec::Qemu(endpoint) => tracing::info!(
            "serving QEMU's display from its {endpoint} on spice://{}{}",
            listener.local_addr()?,
            if displays > 1 {
                format!(" as {displays} monitors")
            } else {
                String::new()
            }
        ),
    }
    let srv = Arc::clone(&server);
    let mut accept = tokio::spawn(async move { srv.serve(listener).await });

    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("waiting for SIGINT")?; tracing::info!("SIGINT: shutting down"); }
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        r = &mut accept => {
            r.context("the accept loop")??;
            bail!("the accept loop ended unexpectedly");
        }
        r = &mut source_task => {
            server.shutdown();
            r.context("the source task")??;
            bail!("the source ended unexpectedly");
        }
    }
    server.shutdown();
    source_task.abort();
    if let Some(d) = &demo {
        d.stop();
    }
    for b in &buses {
        b.close();
    }
    if !server.wait_closed(Duration::from_secs(3)).await {
        tracing::warn!("some connections did not close within 3 s");
    }
    if let Some(h) = http {
        h.abort();
    }
    tracing::info!("bye");
    Ok(())
}

fn render_demo(args: RenderArgs) -> Result<()> {
    let (width, height) = args.size;
    if args.unix_ms < args.start_unix_ms {
        bail!("--unix-ms is before --start-unix-ms");
    }
    let mut demo = scanoutd_demo::DemoSource::new(scanoutd_demo::DemoConfig {
        width,
        height,
        scene: scene_of(args.scene),
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut frame = scanoutd_types::Frame::new(width, height);
    demo.render(&mut frame, args.unix_ms - args.start_unix_ms, args.unix_ms);
    std::fs::write(&args.out, http::ppm(&frame))
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

fn scene_of(s: SceneArg) -> Scene {
    match s {
        SceneArg::Motion => Scene::Motion,
        SceneArg::Still => Scene::Still,
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("scanoutd")
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(*args)),
        Command::RenderDemo(args) => render_demo(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_argument() {
        assert_eq!(parse_console("0"), Ok(ConsoleArg::List(vec![0])));
        assert_eq!(parse_console("2,0"), Ok(ConsoleArg::List(vec![2, 0])));
        assert_eq!(parse_console(" 1, 3 "), Ok(ConsoleArg::List(vec![1, 3])));
        assert_eq!(parse_console("all"), Ok(ConsoleArg::All));
        assert_eq!(parse_console("ALL"), Ok(ConsoleArg::All));
        for bad in ["", "x", "1,", "1,1", "-1", "0,all"] {
            assert!(parse_console(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=spice_server::MAX_DISPLAYS as u32)
            .map(|i| i.to_string())
            .collect();
        assert!(parse_console(&many.join(",")).is_err());
    }

    fn serve_args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["scanoutd", "serve"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(args) => *args,
            other => panic!("not serve: {other:?}"),
        }
    }

    /// Options of the other source are refused with a message naming them, never ignored.
    #[test]
    fn options_of_the_other_source_are_refused() {
        let qemu = ["--source", "qemu-qmp:/tmp/x.sock"];
        for (extra, named) in [
            (&["--size", "800x600"][..], "--size"),
            (&["--scene", "still"][..], "--scene"),
        ] {
            let mut argv = qemu.to_vec();
            argv.extend_from_slice(extra);
            let err = check_source_options(&serve_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(named) && err.contains("demo source"),
                "{err}"
            );
        }
        for (extra, named) in [
            (&["--console", "1"][..], "--console"),
            (&["--gpu", "off"][..], "--gpu"),
            (&["--on-qemu-exit", "exit"][..], "--on-qemu-exit"),
            (
                &["--render-node", "/dev/dri/renderD128"][..],
                "--render-node",
            ),
        ] {
            let err = check_source_options(&serve_args(extra))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(named) && err.contains("QEMU source"),
                "{err}"
            );
        }
        let err = check_source_options(&serve_args(&["--gpu", "off", "--console", "0"]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--console, --gpu apply only"), "{err}");
        // What belongs to each source, and what both take, passes.
        check_source_options(&serve_args(&[
            "--size", "800x600", "--scene", "still", "--fps", "30",
        ]))
        .unwrap();
        let mut argv = qemu.to_vec();
        argv.extend_from_slice(&[
            "--console",
            "all",
            "--gpu",
            "off",
            "--on-qemu-exit",
            "exit",
            "--fps",
            "30",
        ]);
        check_source_options(&serve_args(&argv)).unwrap();
        // Defaults when not given.
        let args = serve_args(&[]);
        assert_eq!(
            (args.size, args.scene, args.gpu, args.on_qemu_exit),
            (None, None, None, None)
        );
    }

    #[test]
    fn codec_auto_without_encoders_serves_drawables_named_codecs_must_exist() {
        let all = Codec::ALL.to_vec();
        assert_eq!(
            choose_codecs(CodecArg::Auto, all.clone(), &[Codec::Vp8, Codec::H264]).unwrap(),
            vec![Codec::H264, Codec::Vp8]
        );
        assert_eq!(
            choose_codecs(CodecArg::Auto, all, &[]).unwrap(),
            Vec::<Codec>::new()
        );
        let err = choose_codecs(CodecArg::H265, vec![Codec::H265], &[Codec::H264])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--codec H265") && err.contains("h264"),
            "{err}"
        );
    }

    #[test]
    fn console_flag_parses() {
        let cli = Cli::try_parse_from([
            "scanoutd",
            "serve",
            "--source",
            "qemu-qmp:/tmp/x.sock",
            "--console",
            "all",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve");
        };
        assert_eq!(args.console, Some(ConsoleArg::All));
    }
}

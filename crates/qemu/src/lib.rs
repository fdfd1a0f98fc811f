//! The QEMU D-Bus display source: a VM's console, received over QEMU's `-display dbus`, written
//! into a [`FrameBus`], with keyboard and mouse sent back.
//!
//! This is the 2D path, in one of two modes ([`QemuEndpoint`]):
//!
//! * **bus mode** ([`QemuDisplay::connect`]): QEMU runs with `-display dbus,addr=<address>` (or
//!   on the session bus) and owns `org.qemu` there;
//! * **peer-to-peer mode** ([`QemuDisplay::connect_qmp`]): QEMU runs with
//!   `-display dbus,p2p=yes` and a QMP socket; we pass it one end of a socket pair with `getfd`
//!   and `add_client @dbus-display`, QEMU serves its objects on it (it is the D-Bus server, we
//!   authenticate as the client) and there is no bus.
//!
//! Either way, [`QemuDisplay`]
//!
//! 1. finds QEMU (bus mode: the owner of `org.qemu`, waiting for it if asked), reads the
//!    VM's `Name` and `ConsoleIDs` and picks the first `Graphic` console (or the one given;
//!    [`QemuDisplay::connect_consoles`] shows several, a [`ConsoleSelection`], each with its
//!    own listener and [`FrameBus`], all over the one main connection: in peer-to-peer mode
//!    QEMU has a single client);
//! 2. makes a socket pair per console, passes one end with `Console.RegisterListener` and
//!    serves our `org.qemu.Display1.Listener` object on the other end over a peer-to-peer
//!    D-Bus connection (we are the authentication client there, QEMU calls us);
//! 3. applies each `Scanout` / `Update` to a shadow BGRx surface (converting from the pixman
//!    format) and publishes it with [`FrameBus::try_write`], stamped with the receive time
//!    (QEMU ≥ 9.2 shares shareable surfaces as a memfd instead, `Listener.Unix.Map`, advertised
//!    in the listener's `Interfaces`: the damaged rows are read from it with `pread`);
//!    a frame the ring cannot take stays pending and is retried, so nothing is lost and QEMU
//!    is never waited on;
//! 4. keeps the guest cursor (`CursorDefine`, `MouseSet`) in a [`CursorState`] watch
//!    ([`CursorState::to_neutral`] gives the form the SPICE server takes);
//! 5. sends input from [`QemuDisplay::input`] (an [`InputSink`]) as `Keyboard` / `Mouse` calls
//!    (pointer positions to the console of their display, keys to the first console);
//! 6. reports QEMU going away (the listener socket closing, `org.qemu` losing its owner, the
//!    bus or the peer-to-peer connection closing) through [`QemuDisplay::closed`] and
//!    [`QemuDisplay::state`]; the last frame stays in the bus.
//!
//! See `shared/docs/qemu-dbus-display.md` for the protocol.
#![forbid(unsafe_code)]

mod cursor;
mod dmabuf;
mod input;
mod listener;
mod map;
mod pixels;
mod proxies;
mod qmp;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use scanoutd_ring::FrameBus;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zbus::names::{BusName, OwnedUniqueName};
use zbus::proxy::CacheProperties;

pub use dmabuf::{DmabufRead, DmabufReadFuture, DmabufReader, DMABUF2_INTERFACE, READ_TIMEOUT};
pub use input::{button_to_qemu, scancode_to_qnum, QemuInput, QNUM_PAUSE, SCANCODE_PAUSE};
pub use listener::{cursor_shape, CursorState, MAX_CURSOR_SIZE};
pub use map::MAP_INTERFACE;
pub use pixels::{Applied, FrameError, PixelFormat, Surface, MAX_DIMENSION, MAX_PIXELS};
pub use scanoutd_types::InputSink;

use proxies::{ConsoleProxy, KeyboardProxy, MouseProxy, VmProxy};

/// The bus name QEMU claims.
pub const QEMU_BUS_NAME: &str = "org.qemu";
/// Where QEMU looks for our listener object on the listener connection.
pub const LISTENER_PATH: &str = "/org/qemu/Display1/Listener";

/// Errors of [`QemuDisplay::connect`].
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("D-Bus: {0}")]
    DBus(#[from] zbus::Error),
    #[error("D-Bus: {0}")]
    Fdo(#[from] zbus::fdo::Error),
    #[error("no QEMU owns {name} on the bus (waited {waited:?})")]
    NotOnBus { name: String, waited: Duration },
    #[error("QEMU has no console {0}")]
    NoSuchConsole(u32),
    #[error("QEMU console {id} is a {kind} console, not a graphic one")]
    NotGraphic { id: u32, kind: String },
    #[error("QEMU has no graphic console")]
    NoGraphicConsole,
    #[error("no console to show: the console list or the frame buses are empty")]
    NothingToShow,
    #[error("listener socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU did not complete the listener handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("QMP socket {}: {source}", path.display())]
    QmpConnect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP socket {}: {source}", path.display())]
    QmpIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "QMP socket {}: nothing within {timeout:?} while waiting for {waiting}{}",
        path.display(),
        if *waiting == "the QMP greeting" {
            " (QEMU serves one client per QMP socket at a time: give scanoutd a -qmp of its own)"
        } else {
            ""
        }
    )]
    QmpTimeout {
        path: PathBuf,
        waiting: &'static str,
        timeout: Duration,
    },
    #[error("{} is not a QMP socket: {detail}", path.display())]
    NotQmp { path: PathBuf, detail: String },
    #[error("QMP {command} failed: {class}: {desc}")]
    QmpCommand {
        command: &'static str,
        class: String,
        desc: String,
    },
    #[error(
        "QEMU at {} refused the D-Bus display client (it needs -display dbus,p2p=yes): {desc}",
        path.display()
    )]
    AddClient { path: PathBuf, desc: String },
    #[error("QEMU did not complete the peer-to-peer D-Bus handshake within {0:?}")]
    PeerHandshakeTimeout(Duration),
}

/// Where QEMU's D-Bus display is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuEndpoint {
    /// A D-Bus bus address (e.g. `unix:path=/run/vm1/bus`) where QEMU, started with
    /// `-display dbus,addr=ADDRESS`, owns [`ConnectOptions::bus_name`].
    Bus(String),
    /// QEMU's QMP unix socket; QEMU runs `-display dbus,p2p=yes` and gets a peer-to-peer D-Bus
    /// connection through `add_client`. QEMU serves one client per QMP socket at a time, so
    /// give this one its own `-qmp` (QEMU accepts several).
    Qmp(PathBuf),
}

impl std::fmt::Display for QemuEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QemuEndpoint::Bus(address) => write!(f, "D-Bus bus {address}"),
            QemuEndpoint::Qmp(path) => write!(f, "QMP socket {}", path.display()),
        }
    }
}

/// How [`QemuDisplay::connect`] finds its console.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The name QEMU owns ([`QEMU_BUS_NAME`]).
    pub bus_name: String,
    /// The console index; `None` picks the first `Graphic` console.
    pub console: Option<u32>,
    /// How long to wait for QEMU to claim `bus_name` (zero: fail at once).
    pub wait_for_qemu: Duration,
    /// Input events queued towards QEMU before new ones are dropped.
    pub input_queue: usize,
    /// Timeout of each call to QEMU (input, properties, registration, each QMP step); the
    /// D-Bus handshakes may take twice this.
    pub call_timeout: Duration,
    /// Offer QEMU the shared-memory listener interface (`Listener.Unix.Map`, QEMU ≥ 9.2), so
    /// shareable surfaces come as a memfd instead of inline pixels. Older QEMU ignores it.
    pub shared_memory: bool,
    /// The GPU path for GL scanouts (`-display dbus,gl=on`): reads dmabufs into CPU memory.
    /// `None`: GL scanouts are refused with a clear error (nothing could show them).
    pub dmabuf: Option<Arc<dyn DmabufReader>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            bus_name: QEMU_BUS_NAME.to_owned(),
            console: None,
            wait_for_qemu: Duration::ZERO,
            input_queue: 256,
            call_timeout: Duration::from_secs(5),
            shared_memory: true,
            dmabuf: None,
        }
    }
}

/// Why the link to QEMU ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// QEMU closed the listener socket (it exited, or dropped the listener).
    ListenerClosed,
    /// The QEMU we registered with no longer owns its bus name.
    QemuLeftBus,
    /// The bus connection closed.
    BusClosed,
    /// The peer-to-peer D-Bus connection to QEMU (QMP mode) closed.
    PeerClosed,
    /// This side closed the link ([`QemuDisplay::close`] or drop).
    Local,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::ListenerClosed => "QEMU closed the listener connection",
            CloseReason::QemuLeftBus => "QEMU left the bus",
            CloseReason::BusClosed => "the D-Bus connection closed",
            CloseReason::PeerClosed => "QEMU closed the peer-to-peer D-Bus connection",
            CloseReason::Local => "closed by scanoutd",
        })
    }
}

/// The state of the link to QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    Closed(CloseReason),
}

impl LinkState {
    pub fn is_closed(&self) -> bool {
        matches!(self, LinkState::Closed(_))
    }
}

/// Counters of one [`QemuDisplay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QemuStats {
    /// `Scanout` messages applied (`ScanoutMap` included).
    pub scanouts: u64,
    /// `Update` messages applied (`UpdateMap` included).
    pub updates: u64,
    /// `ScanoutMap` messages applied: surfaces QEMU shared as memory (also in `scanouts`).
    pub map_scanouts: u64,
    /// `UpdateMap` messages applied (also in `updates`).
    pub map_updates: u64,
    /// Whether the current surface comes through shared memory (`ScanoutMap`).
    pub shared_memory: bool,
    /// Malformed `Scanout` / `Update` messages ignored.
    pub frame_errors: u64,
    /// Updates that reached past the surface and grew it.
    pub surface_grown: u64,
    /// Frames written into the bus.
    pub frames_published: u64,
    /// Whether QEMU disabled the scanout (the last picture is kept).
    pub disabled: bool,
    /// The pixman format code of the last frame data QEMU sent (0 before any).
    pub pixman_format: u32,
    /// Input calls QEMU accepted.
    pub input_sent: u64,
    /// Input calls QEMU refused (logged at debug).
    pub input_failed: u64,
    /// Input events with no QEMU equivalent (unknown scancodes, lock-key state).
    pub input_skipped: u64,
    /// Input events dropped because the queue was full or the link closed.
    pub input_dropped: u64,
    /// GL scanouts (`ScanoutDMABUF`/`2`) and their updates (`UpdateDMABUF`).
    pub dmabuf_scanouts: u64,
    pub dmabuf_updates: u64,
    /// GL frames dropped: the GPU read failed, was refused (busy) or timed out; QEMU was
    /// answered anyway.
    pub dmabuf_failed: u64,
    /// The longest an `UpdateDMABUF` was held before its reply, in microseconds.
    pub dmabuf_max_hold_us: u64,
}

/// One QEMU console as QEMU describes it ([`list_consoles`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleInfo {
    /// The console index (`Console_<id>`).
    pub id: u32,
    /// "Graphic" or "Text".
    pub kind: String,
    /// e.g. "VGA", or the device id.
    pub label: String,
    /// The head number on its graphics device.
    pub head: u32,
}

impl ConsoleInfo {
    pub fn is_graphic(&self) -> bool {
        self.kind == "Graphic"
    }
}

/// Which QEMU consoles to show, in display order (display 0 first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleSelection {
    /// The first graphic console.
    #[default]
    First,
    /// These consoles, in this order; each must exist and be graphic.
    List(Vec<u32>),
    /// Every graphic console, in QEMU's order.
    AllGraphic,
}

impl ConsoleSelection {
    /// The console ids this selection names among `consoles` (QEMU's `ConsoleIDs` order).
    pub fn resolve(&self, consoles: &[ConsoleInfo]) -> Result<Vec<u32>, QemuError> {
        match self {
            ConsoleSelection::First => consoles
                .iter()
                .find(|c| c.is_graphic())
                .map(|c| vec![c.id])
                .ok_or(QemuError::NoGraphicConsole),
            ConsoleSelection::AllGraphic => {
                let ids: Vec<u32> = consoles
                    .iter()
                    .filter(|c| c.is_graphic())
                    .map(|c| c.id)
                    .collect();
                if ids.is_empty() {
                    return Err(QemuError::NoGraphicConsole);
                }
                Ok(ids)
            }
            ConsoleSelection::List(ids) => {
                if ids.is_empty() {
                    return Err(QemuError::NothingToShow);
                }
                for &id in ids {
                    let Some(c) = consoles.iter().find(|c| c.id == id) else {
                        return Err(QemuError::NoSuchConsole(id));
                    };
                    if !c.is_graphic() {
                        return Err(QemuError::NotGraphic {
                            id,
                            kind: c.kind.clone(),
                        });
                    }
                }
                Ok(ids.clone())
            }
        }
    }
}

/// The consoles of the QEMU at `endpoint` (connects, reads `ConsoleIDs` and each console's
/// `Type`, `Label` and `Head`, and closes again). In QMP mode this is one `add_client` of its
/// own. Used to learn how many consoles [`ConsoleSelection::AllGraphic`] will show.
pub async fn list_consoles(
    endpoint: &QemuEndpoint,
    opts: &ConnectOptions,
) -> Result<Vec<ConsoleInfo>, QemuError> {
    let (conn, link) = open(endpoint, opts).await?;
    let dest = link.destination()?;
    let found = discover(&conn, &dest).await;
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the D-Bus connection");
    }
    Ok(found?.into_iter().map(|(info, _)| info).collect())
}

/// One console of a [`QemuDisplay`]: its listener feeds its own [`FrameBus`]. A clone shares
/// the console's counters (for a metrics exporter that outlives the borrow of the display).
#[derive(Clone)]
pub struct QemuHead {
    bus: FrameBus,
    console_id: u32,
    console_label: String,
    publisher: Arc<listener::Publisher>,
    dmabuf: Arc<dmabuf::DmabufSink>,
    cursor: watch::Receiver<CursorState>,
    input_counters: Arc<input::InputCounters>,
}

impl std::fmt::Debug for QemuHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuHead")
            .field("console_id", &self.console_id)
            .field("console_label", &self.console_label)
            .finish_non_exhaustive()
    }
}

impl QemuHead {
    /// The console index.
    pub fn console_id(&self) -> u32 {
        self.console_id
    }

    /// The console's label (e.g. "VGA").
    pub fn console_label(&self) -> &str {
        &self.console_label
    }

    /// The bus this console's frames go to.
    pub fn bus(&self) -> &FrameBus {
        &self.bus
    }

    /// The console's picture as last received (for snapshots and tests).
    pub fn surface(&self) -> Surface {
        self.publisher.surface()
    }

    /// The guest's cursor on this console, updated on every `CursorDefine` / `MouseSet`.
    pub fn cursor(&self) -> watch::Receiver<CursorState> {
        self.cursor.clone()
    }

    /// This console's counters. The input counters are the connection's (input goes through
    /// one queue for every console).
    pub fn stats(&self) -> QemuStats {
        let d = &self.publisher.counters;
        let i = &self.input_counters;
        let g = &self.dmabuf.counters;
        QemuStats {
            scanouts: d.scanouts.load(Ordering::Relaxed),
            updates: d.updates.load(Ordering::Relaxed),
            map_scanouts: d.map_scanouts.load(Ordering::Relaxed),
            map_updates: d.map_updates.load(Ordering::Relaxed),
            shared_memory: d.path.load(Ordering::Relaxed) == listener::FramePath::Map as u8,
            frame_errors: d.frame_errors.load(Ordering::Relaxed),
            surface_grown: d.grown.load(Ordering::Relaxed),
            frames_published: self.publisher.frames_published(),
            disabled: d.disabled.load(Ordering::Relaxed),
            pixman_format: d.format.load(Ordering::Relaxed),
            input_sent: i.sent.load(Ordering::Relaxed),
            input_failed: i.failed.load(Ordering::Relaxed),
            input_skipped: i.skipped.load(Ordering::Relaxed),
            input_dropped: i.dropped.load(Ordering::Relaxed),
            dmabuf_scanouts: g.scanouts.load(Ordering::Relaxed),
            dmabuf_updates: g.updates.load(Ordering::Relaxed),
            dmabuf_failed: g.failed.load(Ordering::Relaxed),
            dmabuf_max_hold_us: g.max_hold_us.load(Ordering::Relaxed),
        }
    }
}

/// A connection to QEMU's display showing one console, or several
/// ([`QemuDisplay::connect_consoles`]: one D-Bus connection, one listener per console, each
/// feeding its own bus). Dropping it unregisters the listeners and stops its tasks; the last
/// frames stay in the buses.
pub struct QemuDisplay {
    vm_name: String,
    vm_uuid: String,
    endpoint: QemuEndpoint,
    /// The unique name of QEMU on the bus (bus mode only).
    owner: Option<OwnedUniqueName>,
    /// The consoles shown, in display order; never empty.
    heads: Vec<QemuHead>,
    state: watch::Receiver<LinkState>,
    state_tx: Arc<watch::Sender<LinkState>>,
    input: QemuInput,
    tasks: Vec<JoinHandle<()>>,
    /// The bus connection and one listener connection per console; dropping them closes the
    /// sockets, and QEMU drops the listeners.
    conns: Option<(zbus::Connection, Vec<zbus::Connection>)>,
}

impl std::fmt::Debug for QemuDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuDisplay")
            .field("vm_name", &self.vm_name)
            .field("heads", &self.heads)
            .field("endpoint", &self.endpoint)
            .field("owner", &self.owner())
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl QemuDisplay {
    /// Connect to the D-Bus bus at `address` (e.g. `unix:path=/run/vm/bus`) where QEMU runs
    /// `-display dbus`, register a listener on its console and start writing frames into `bus`.
    /// `bus` must be fed by this source only. Must be called inside a Tokio runtime.
    pub async fn connect(
        address: &str,
        bus: FrameBus,
        opts: ConnectOptions,
    ) -> Result<Self, QemuError> {
        Self::connect_to(&QemuEndpoint::Bus(address.to_owned()), bus, opts).await
    }

    /// Peer-to-peer mode: connect to QEMU's QMP socket at `path` (QEMU runs
    /// `-display dbus,p2p=yes -qmp unix:PATH,server=on,wait=off`), attach a D-Bus connection
    /// with `getfd` + `add_client @dbus-display`, then proceed as [`QemuDisplay::connect`].
    /// `opts.bus_name` and `opts.wait_for_qemu` do not apply. QEMU has one p2p display client
    /// at a time: a later `add_client` (by anyone) takes the objects over.
    pub async fn connect_qmp(
        path: impl AsRef<Path>,
        bus: FrameBus,
        opts: ConnectOptions,
    ) -> Result<Self, QemuError> {
        Self::connect_to(&QemuEndpoint::Qmp(path.as_ref().to_owned()), bus, opts).await
    }

    /// Connect to QEMU's display at `endpoint` (either mode): the console
    /// [`ConnectOptions::console`] names, or the first graphic one.
    pub async fn connect_to(
        endpoint: &QemuEndpoint,
        bus: FrameBus,
        opts: ConnectOptions,
    ) -> Result<Self, QemuError> {
        let selection = match opts.console {
            Some(id) => ConsoleSelection::List(vec![id]),
            None => ConsoleSelection::First,
        };
        Self::connect_consoles(endpoint, selection, vec![bus], opts).await
    }

    /// Connect to QEMU's display at `endpoint` and show several consoles over the one D-Bus
    /// connection (in peer-to-peer mode QEMU has a single client per `add_client`): the
    /// consoles `selection` names are paired in order with `buses` (display 0 is the first),
    /// and each gets a listener of its own feeding its bus. Consoles beyond the buses are not
    /// shown; buses beyond the consoles get nothing (both are logged). Input from
    /// [`QemuDisplay::input`] goes to the console its pointer display names (keyboard: the
    /// first console). [`ConnectOptions::console`] does not apply.
    pub async fn connect_consoles(
        endpoint: &QemuEndpoint,
        selection: ConsoleSelection,
        buses: Vec<FrameBus>,
        opts: ConnectOptions,
    ) -> Result<Self, QemuError> {
        if buses.is_empty() {
            return Err(QemuError::NothingToShow);
        }
        let (conn, link) = open(endpoint, &opts).await?;
        Self::attach(conn, link, endpoint.clone(), selection, buses, opts).await
    }

    /// Everything after reaching QEMU: the consoles, their listeners, the tasks.
    async fn attach(
        conn: zbus::Connection,
        link: MainLink,
        endpoint: QemuEndpoint,
        selection: ConsoleSelection,
        buses: Vec<FrameBus>,
        opts: ConnectOptions,
    ) -> Result<Self, QemuError> {
        let dest = link.destination()?;
        let vm = VmProxy::builder(&conn)
            .destination(dest.clone())
            .build()
            .await?;
        let vm_name = vm.name().await?;
        let vm_uuid = vm.uuid().await.unwrap_or_default();
        let found = discover(&conn, &dest).await?;
        let infos: Vec<ConsoleInfo> = found.iter().map(|(i, _)| i.clone()).collect();
        let mut ids = selection.resolve(&infos)?;
        if ids.len() > buses.len() {
            tracing::warn!(
                vm = %vm_name, shown = ?&ids[..buses.len()], not_shown = ?&ids[buses.len()..],
                "QEMU has more consoles than there are displays; the rest are not shown"
            );
            ids.truncate(buses.len());
        } else if ids.len() < buses.len() {
            tracing::warn!(
                vm = %vm_name, consoles = ?ids, displays = buses.len(),
                "QEMU has fewer consoles than there are displays; the others keep their last picture"
            );
        }
        let first = ids.first().copied().ok_or(QemuError::NothingToShow)?;
        let keyboard = KeyboardProxy::builder(&conn)
            .destination(dest.clone())
            .path(console_path(first))
            .cache_properties(CacheProperties::No)
            .build()
            .await?;

        let (input, rx, input_counters) = input::channel(opts.input_queue);
        let mut heads = Vec::with_capacity(ids.len());
        let mut head_inputs = Vec::with_capacity(ids.len());
        let mut listener_conns = Vec::with_capacity(ids.len());
        let mut consoles = Vec::with_capacity(ids.len());
        for (id, bus) in ids.into_iter().zip(buses) {
            let Some((info, console)) = found.iter().find(|(i, _)| i.id == id) else {
                return Err(QemuError::NoSuchConsole(id));
            };
            let mouse = MouseProxy::builder(&conn)
                .destination(dest.clone())
                .path(console_path(id))
                .build()
                .await?;
            let (head, listener_conn) =
                register(console, info, bus, &opts, Arc::clone(&input_counters)).await?;
            tracing::info!(
                vm = %vm_name, console = id, label = %info.label, via = %endpoint,
                shared_memory = opts.shared_memory, gpu = opts.dmabuf.is_some(),
                "registered as display listener of QEMU"
            );
            head_inputs.push(input::HeadInput {
                mouse,
                console: console.clone(),
            });
            consoles.push(console.clone());
            heads.push(head);
            listener_conns.push(listener_conn);
        }

        // Every listener is registered: start the tasks.
        let (state_tx, state) = watch::channel(LinkState::Connected);
        let state_tx = Arc::new(state_tx);
        let mut tasks = vec![tokio::spawn(
            input::InputTask {
                rx,
                keyboard,
                heads: head_inputs,
                counters: Arc::clone(&input_counters),
                state: state.clone(),
            }
            .run(),
        )];
        for (console, head) in consoles.into_iter().zip(&heads) {
            tasks.push(tokio::spawn(watch_size(
                console,
                Arc::downgrade(&head.publisher),
            )));
        }
        tasks.push(tokio::spawn(watch_link(
            conn.clone(),
            listener_conns.clone(),
            link.clone(),
            Arc::clone(&state_tx),
        )));

        Ok(QemuDisplay {
            vm_name,
            vm_uuid,
            endpoint,
            owner: link.owner(),
            heads,
            state,
            state_tx,
            input,
            tasks,
            conns: Some((conn, listener_conns)),
        })
    }

    /// The VM's name (`-name`, or `QEMU <version>`).
    pub fn vm_name(&self) -> &str {
        &self.vm_name
    }

    /// The VM's UUID as QEMU reports it (empty if it did not).
    pub fn vm_uuid(&self) -> &str {
        &self.vm_uuid
    }

    /// The consoles shown, in display order (display `i` is `heads()[i]`); at least one.
    pub fn heads(&self) -> &[QemuHead] {
        &self.heads
    }

    /// The first console shown (display 0).
    fn first(&self) -> &QemuHead {
        // Never empty: `attach` registers at least one console or fails.
        &self.heads[0]
    }

    /// The console index in use (the first one with several).
    pub fn console_id(&self) -> u32 {
        self.first().console_id
    }

    /// The console's label (e.g. "VGA"; the first one's with several).
    pub fn console_label(&self) -> &str {
        &self.first().console_label
    }

    /// The unique bus name of the QEMU process we registered with (empty in peer-to-peer
    /// mode, where there is no bus).
    pub fn owner(&self) -> &str {
        self.owner.as_ref().map_or("", |o| o.as_str())
    }

    /// Where QEMU was reached.
    pub fn endpoint(&self) -> &QemuEndpoint {
        &self.endpoint
    }

    /// The bus the frames go to (the first console's with several).
    pub fn bus(&self) -> &FrameBus {
        &self.first().bus
    }

    /// The console's picture as last received (the first console's with several).
    pub fn surface(&self) -> Surface {
        self.first().surface()
    }

    /// The sink that sends input to QEMU. Cheap to clone; never blocks. Pointer positions go
    /// to the console of their display ([`InputEvent::MouseMove`]'s `display` indexes
    /// [`QemuDisplay::heads`]; others are skipped), buttons and relative motion to the console
    /// the pointer was last on, keys to the first console.
    ///
    /// [`InputEvent::MouseMove`]: scanoutd_types::InputEvent::MouseMove
    pub fn input(&self) -> QemuInput {
        self.input.clone()
    }

    /// The guest's cursor (the first console's with several), updated on every
    /// `CursorDefine` / `MouseSet`.
    pub fn cursor(&self) -> watch::Receiver<CursorState> {
        self.first().cursor()
    }

    /// The link state; it changes once, to [`LinkState::Closed`].
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.state.borrow().is_closed()
    }

    /// Resolves when the link to QEMU ends, with the reason.
    pub async fn closed(&self) -> CloseReason {
        let mut state = self.state.clone();
        let result = state.wait_for(LinkState::is_closed).await.map(|s| *s);
        match result {
            Ok(LinkState::Closed(reason)) => reason,
            // The watcher task is gone without saying why: treat the bus as closed.
            _ => CloseReason::BusClosed,
        }
    }

    /// Counters of the first console (see [`QemuHead::stats`] for the others).
    pub fn stats(&self) -> QemuStats {
        self.first().stats()
    }
}

impl QemuDisplay {
    /// Unregister from QEMU and close the connections now (dropping does the same once the
    /// aborted tasks are gone). The state becomes [`CloseReason::Local`].
    pub async fn close(mut self) {
        self.stop();
        if let Some((conn, listener_conns)) = self.conns.take() {
            // Closing the listener sockets is what makes QEMU drop the listeners (and release
            // any key still held down).
            for listener_conn in listener_conns {
                if let Err(e) = listener_conn.close().await {
                    tracing::debug!(error = %e, "closing the QEMU listener connection");
                }
            }
            if let Err(e) = conn.close().await {
                tracing::debug!(error = %e, "closing the D-Bus connection");
            }
        }
    }

    fn stop(&mut self) {
        // The tasks hold connection clones: stop them so the sockets close with `conns`.
        for t in &self.tasks {
            t.abort();
        }
        self.state_tx.send_if_modified(|s| {
            if s.is_closed() {
                return false;
            }
            *s = LinkState::Closed(CloseReason::Local);
            true
        });
    }
}

impl Drop for QemuDisplay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reach QEMU at `endpoint`: the bus connection (and QEMU's unique name there), or a fresh
/// peer-to-peer connection through QMP `add_client`.
async fn open(
    endpoint: &QemuEndpoint,
    opts: &ConnectOptions,
) -> Result<(zbus::Connection, MainLink), QemuError> {
    Ok(match endpoint {
        QemuEndpoint::Bus(address) => {
            let conn = zbus::connection::Builder::address(address.as_str())
                .method_timeout(opts.call_timeout)
                .build()
                .await?;
            let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
            let owner = wait_for_owner(&dbus, &opts.bus_name, opts.wait_for_qemu).await?;
            let link = MainLink::Bus {
                dbus,
                name: opts.bus_name.clone(),
                owner,
            };
            (conn, link)
        }
        QemuEndpoint::Qmp(path) => {
            let ours = qmp::add_dbus_client(path, opts.call_timeout).await?;
            // QEMU is the D-Bus server on this socket; we authenticate as the client.
            let handshake = opts.call_timeout * 2;
            let conn = tokio::time::timeout(
                handshake,
                zbus::connection::Builder::unix_stream(ours)
                    .p2p()
                    .method_timeout(opts.call_timeout)
                    .build(),
            )
            .await
            .map_err(|_| QemuError::PeerHandshakeTimeout(handshake))??;
            (conn, MainLink::P2p)
        }
    })
}

/// Register our listener on one console: make a socket pair, serve the listener object on
/// our end, pass QEMU the other with `RegisterListener`.
async fn register(
    console: &ConsoleProxy<'static>,
    info: &ConsoleInfo,
    bus: FrameBus,
    opts: &ConnectOptions,
    input_counters: Arc<input::InputCounters>,
) -> Result<(QemuHead, zbus::Connection), QemuError> {
    let publisher = listener::Publisher::new(bus.clone());
    let (cursor_tx, cursor) = watch::channel(CursorState::default());
    let map_slot = Arc::new(map::MapSlot::default());
    let dmabuf_sink = Arc::new(dmabuf::DmabufSink::new(
        opts.dmabuf.clone(),
        Arc::clone(&publisher),
    ));
    let mut interfaces = Vec::new();
    if opts.shared_memory {
        interfaces.push(MAP_INTERFACE.to_owned());
    }
    if opts.dmabuf.is_some() {
        interfaces.push(DMABUF2_INTERFACE.to_owned());
    }
    let object = listener::Listener {
        publisher: Arc::clone(&publisher),
        cursor: cursor_tx,
        dmabuf: Arc::clone(&dmabuf_sink),
        interfaces,
        map: Arc::clone(&map_slot),
    };
    let (ours, theirs) = UnixStream::pair()?;
    let mut build = zbus::connection::Builder::unix_stream(ours)
        .p2p()
        .serve_at(LISTENER_PATH, object);
    if opts.shared_memory {
        // Served before the connection processes anything: QEMU's GetAll on it comes
        // right after the handshake.
        build = build.serve_at(
            LISTENER_PATH,
            map::MapListener {
                publisher: Arc::clone(&publisher),
                slot: map_slot,
            },
        );
    }
    if opts.dmabuf.is_some() {
        build = build.serve_at(
            LISTENER_PATH,
            dmabuf::Dmabuf2Listener {
                sink: Arc::clone(&dmabuf_sink),
            },
        );
    }
    let build = build.build();
    // QEMU answers RegisterListener, then runs the D-Bus handshake on its end of the
    // socket: both sides proceed at once.
    let register = async {
        let r = console
            .register_listener(zbus::Fd::from(theirs.as_fd()))
            .await;
        // Only QEMU may hold the other end, so that its exit closes our socket.
        drop(theirs);
        r
    };
    // Bounded: a QEMU that takes the socket but never authenticates must not hang us.
    let handshake = opts.call_timeout * 2;
    let (listener_conn, registered) =
        tokio::time::timeout(handshake, async { tokio::join!(build, register) })
            .await
            .map_err(|_| QemuError::HandshakeTimeout(handshake))?;
    registered?;
    let listener_conn = listener_conn?;
    let head = QemuHead {
        bus,
        console_id: info.id,
        console_label: info.label.clone(),
        publisher,
        dmabuf: dmabuf_sink,
        cursor,
        input_counters,
    };
    Ok((head, listener_conn))
}

/// The main connection to QEMU: how proxies address it and how its departure shows.
#[derive(Clone)]
enum MainLink {
    /// On a bus, QEMU is the unique name that owned `name` when we connected.
    Bus {
        dbus: zbus::fdo::DBusProxy<'static>,
        name: String,
        owner: OwnedUniqueName,
    },
    /// Peer to peer (QMP `add_client`): no bus, no names.
    P2p,
}

impl MainLink {
    /// The destination for proxies. On a p2p connection messages carry no sender, so a unique
    /// name would filter out every signal; a well-known name is not checked against senders
    /// (and QEMU ignores the destination there).
    fn destination(&self) -> Result<BusName<'static>, QemuError> {
        Ok(match self {
            MainLink::Bus { owner, .. } => BusName::from(owner.clone().into_inner()),
            MainLink::P2p => BusName::try_from(QEMU_BUS_NAME)?,
        })
    }

    fn owner(&self) -> Option<OwnedUniqueName> {
        match self {
            MainLink::Bus { owner, .. } => Some(owner.clone()),
            MainLink::P2p => None,
        }
    }
}

fn console_path(id: u32) -> String {
    format!("/org/qemu/Display1/Console_{id}")
}

/// The unique name owning `name`, polling until `wait` has passed.
async fn wait_for_owner(
    dbus: &zbus::fdo::DBusProxy<'_>,
    name: &str,
    wait: Duration,
) -> Result<OwnedUniqueName, QemuError> {
    let bus_name = BusName::try_from(name)?;
    let start = Instant::now();
    let mut logged = false;
    loop {
        match dbus.get_name_owner(bus_name.clone()).await {
            Ok(owner) => return Ok(owner),
            Err(zbus::fdo::Error::NameHasNoOwner(_)) => {
                if start.elapsed() >= wait {
                    return Err(QemuError::NotOnBus {
                        name: name.to_owned(),
                        waited: start.elapsed(),
                    });
                }
                if !logged {
                    tracing::info!(name, "waiting for QEMU to appear on the bus");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every console QEMU lists, with its proxy (in `ConsoleIDs` order).
async fn discover(
    conn: &zbus::Connection,
    dest: &BusName<'static>,
) -> Result<Vec<(ConsoleInfo, ConsoleProxy<'static>)>, QemuError> {
    let vm = VmProxy::builder(conn)
        .destination(dest.clone())
        .build()
        .await?;
    let ids = vm.console_ids().await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let console = ConsoleProxy::builder(conn)
            .destination(dest.clone())
            .path(console_path(id))
            .build()
            .await?;
        let kind = console.type_().await?;
        let info = ConsoleInfo {
            id,
            label: console.label().await.unwrap_or_default(),
            head: console.head().await.unwrap_or_default(),
            kind,
        };
        if !info.is_graphic() {
            tracing::debug!(id, kind = %info.kind, "non-graphic QEMU console");
        }
        out.push((info, console));
    }
    Ok(out)
}

/// Follow the console's `Width` / `Height`: QEMU switches surfaces without a `Scanout` when the
/// next update does not cover the whole new surface (VGA text mode).
async fn watch_size(
    console: ConsoleProxy<'static>,
    publisher: std::sync::Weak<listener::Publisher>,
) {
    let mut widths = console.receive_width_changed().await;
    let mut heights = console.receive_height_changed().await;
    loop {
        tokio::select! {
            w = widths.next() => if w.is_none() { return },
            h = heights.next() => if h.is_none() { return },
        }
        let (Ok(w), Ok(h)) = (console.width().await, console.height().await) else {
            continue;
        };
        let Some(p) = publisher.upgrade() else {
            return;
        };
        p.resize_hint(w, h);
    }
}

/// Report the end of the link: the listener socket closing, the owner leaving the bus, or the
/// bus connection closing, whichever comes first.
async fn watch_link(
    conn: zbus::Connection,
    listener_conns: Vec<zbus::Connection>,
    link: MainLink,
    state: Arc<watch::Sender<LinkState>>,
) {
    // Any console's listener closing ends the link (QEMU exited, or dropped a listener).
    let listener_closed = async {
        use std::future::Future as _;
        let mut closed: Vec<_> = listener_conns
            .iter()
            .map(|c| Box::pin(c.closed()))
            .collect();
        std::future::poll_fn(|cx| {
            if closed.iter_mut().any(|f| f.as_mut().poll(cx).is_ready()) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    };
    let (dbus, name, owner) = match link {
        MainLink::Bus { dbus, name, owner } => (dbus, name, owner),
        MainLink::P2p => {
            let reason = tokio::select! {
                _ = listener_closed => CloseReason::ListenerClosed,
                _ = conn.closed() => CloseReason::PeerClosed,
            };
            tracing::warn!(%reason, "QEMU display link closed; keeping the last frame");
            set_closed(&state, reason);
            return;
        }
    };
    let owner_gone = async {
        let Ok(mut changes) = dbus
            .receive_name_owner_changed_with_args(&[(0, name.as_str())])
            .await
        else {
            return std::future::pending().await;
        };
        // The subscription is in place: check we did not miss the change before it.
        let Ok(bus_name) = BusName::try_from(name.as_str()) else {
            return std::future::pending().await;
        };
        match dbus.get_name_owner(bus_name).await {
            Ok(o) if o != owner => return,
            Err(zbus::fdo::Error::NameHasNoOwner(_)) => return,
            _ => {}
        }
        while let Some(signal) = changes.next().await {
            let Ok(args) = signal.args() else { continue };
            if args
                .old_owner()
                .as_ref()
                .is_some_and(|o| *o == owner.as_ref())
            {
                return;
            }
        }
        std::future::pending().await
    };
    let reason = tokio::select! {
        _ = listener_closed => CloseReason::ListenerClosed,
        _ = conn.closed() => CloseReason::BusClosed,
        _ = owner_gone => CloseReason::QemuLeftBus,
    };
    tracing::warn!(%reason, owner = %owner, "QEMU display link closed; keeping the last frame");
    set_closed(&state, reason);
}

fn set_closed(state: &watch::Sender<LinkState>, reason: CloseReason) {
    state.send_if_modified(|s| {
        if s.is_closed() {
            return false;
        }
        *s = LinkState::Closed(reason);
        true
    });
}

#[cfg(test)]
mod selection_tests {
    use super::*;

    fn consoles() -> Vec<ConsoleInfo> {
        let c = |id, kind: &str| ConsoleInfo {
            id,
            kind: kind.to_owned(),
            label: format!("c{id}"),
            head: 0,
        };
        vec![c(0, "Text"), c(1, "Graphic"), c(2, "Text"), c(3, "Graphic")]
    }

    #[test]
    fn selections_resolve_in_display_order() {
        let cs = consoles();
        assert_eq!(ConsoleSelection::First.resolve(&cs).unwrap(), [1]);
        assert_eq!(ConsoleSelection::AllGraphic.resolve(&cs).unwrap(), [1, 3]);
        assert_eq!(
            ConsoleSelection::List(vec![3, 1]).resolve(&cs).unwrap(),
            [3, 1]
        );
        assert!(matches!(
            ConsoleSelection::List(vec![1, 9]).resolve(&cs),
            Err(QemuError::NoSuchConsole(9))
        ));
        assert!(matches!(
            ConsoleSelection::List(vec![2]).resolve(&cs),
            Err(QemuError::NotGraphic { id: 2, .. })
        ));
        assert!(matches!(
            ConsoleSelection::List(vec![]).resolve(&cs),
            Err(QemuError::NothingToShow)
        ));
        let text_only = &cs[..1];
        for sel in [ConsoleSelection::First, ConsoleSelection::AllGraphic] {
            assert!(matches!(
                sel.resolve(text_only),
                Err(QemuError::NoGraphicConsole)
            ));
        }
    }
}

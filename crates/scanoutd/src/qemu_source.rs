//! The QEMU source: keeps a connection to a VM's D-Bus display (on a bus, or peer to peer
//! through its QMP socket), re-establishing it when QEMU goes away and comes back (or ending the
//! service, by option).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use scanoutd_qemu::{ConnectOptions, ConsoleSelection, QemuDisplay, QemuEndpoint};
use scanoutd_ring::FrameBus;
use scanoutd_types::{CursorState, InputEvent, InputSink};
use tokio::sync::watch;

use crate::source_metrics::QemuMetrics;

/// The input sink handed to the SPICE server: forwards to the current QEMU connection and
/// drops events while there is none.
#[derive(Default)]
pub struct SwitchableInput {
    current: Mutex<Option<Arc<dyn InputSink>>>,
}

impl SwitchableInput {
    fn set(&self, sink: Option<Arc<dyn InputSink>>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    }
}

impl InputSink for SwitchableInput {
    fn input(&self, event: InputEvent) {
        let sink = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(s) = sink {
            s.input(event);
        }
    }
}

/// What the QEMU source feeds, and how.
pub struct QemuSource {
    pub endpoint: QemuEndpoint,
    /// The consoles to show, paired in order with `buses` (display 0 first).
    pub consoles: ConsoleSelection,
    pub buses: Vec<FrameBus>,
    pub input: Arc<SwitchableInput>,
    /// Each console's pointer goes to the feed of the same index.
    pub cursors: Vec<watch::Sender<CursorState>>,
    pub gpu: Option<Arc<dyn scanoutd_qemu::DmabufReader>>,
    /// End (with an error) when QEMU goes away, instead of waiting for it to come back.
    pub exit_on_close: bool,
    pub metrics: Arc<QemuMetrics>,
}

/// Connect to QEMU's D-Bus display and keep the buses fed, over one connection. Returns only
/// when QEMU went away and `exit_on_close` is set (as an error), or never. In QMP mode every
/// attempt is a new `add_client` on the same socket, so a QEMU restarted there is picked up
/// too; with [`ConsoleSelection::AllGraphic`] the consoles are looked up again on each
/// connection.
pub async fn run(src: QemuSource) -> Result<()> {
    let QemuSource {
        endpoint,
        consoles,
        buses,
        input,
        cursors,
        gpu,
        exit_on_close,
        metrics,
    } = src;
    let mut attempts: u64 = 0;
    loop {
        let opts = ConnectOptions {
            wait_for_qemu: Duration::from_secs(1),
            dmabuf: gpu.clone(),
            ..ConnectOptions::default()
        };
        let connected =
            QemuDisplay::connect_consoles(&endpoint, consoles.clone(), buses.clone(), opts).await;
        match connected {
            Ok(vm) => {
                attempts = 0;
                let heads: Vec<String> = vm
                    .heads()
                    .iter()
                    .map(|h| format!("{} ({})", h.console_id(), h.console_label()))
                    .collect();
                tracing::info!(
                    "connected to the display of VM {:?}, console{} {}",
                    vm.vm_name(),
                    if heads.len() == 1 { "" } else { "s" },
                    heads.join(", ")
                );
                metrics.connected(vm.heads());
                input.set(Some(Arc::new(vm.input())));
                let follow: Vec<_> = vm
                    .heads()
                    .iter()
                    .zip(&cursors)
                    .map(|(head, feed)| tokio::spawn(follow_cursor(head.cursor(), feed.clone())))
                    .collect();
                let reason = vm.closed().await;
                metrics.disconnected();
                input.set(None);
                for f in follow {
                    f.abort();
                }
                tracing::warn!(
                    "QEMU's display went away ({reason:?}); clients keep the last picture"
                );
                if exit_on_close {
                    bail!("QEMU's display went away ({reason:?}) and --on-qemu-exit is exit");
                }
                tracing::info!("waiting for QEMU to come back on {endpoint}");
            }
            Err(e) => {
                // Say it once, then every 30 attempts (about every half minute).
                if attempts.is_multiple_of(30) {
                    tracing::warn!("no QEMU display on {endpoint} yet: {e}; retrying every second");
                }
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How many consoles [`ConsoleSelection::AllGraphic`] shows: QEMU's graphic consoles, looked
/// up once QEMU is reached (retrying every second until it is), at most `max`.
pub async fn count_graphic_consoles(endpoint: &QemuEndpoint, max: usize) -> Result<usize> {
    let mut attempts: u64 = 0;
    loop {
        let opts = ConnectOptions {
            wait_for_qemu: Duration::from_secs(1),
            ..ConnectOptions::default()
        };
        let err = match scanoutd_qemu::list_consoles(endpoint, &opts).await {
            Ok(consoles) => {
                let graphic: Vec<String> = consoles
                    .iter()
                    .filter(|c| c.is_graphic())
                    .map(|c| format!("{} ({})", c.id, c.label))
                    .collect();
                if !graphic.is_empty() {
                    tracing::info!(
                        "QEMU has {} graphic console(s): {}; each is a monitor",
                        graphic.len(),
                        graphic.join(", ")
                    );
                    if graphic.len() > max {
                        tracing::warn!(
                            "only the first {max} consoles are shown (at most {max} displays)"
                        );
                    }
                    return Ok(graphic.len().min(max));
                }
                anyhow::anyhow!("QEMU has no graphic console")
            }
            Err(e) => e.into(),
        };
        if attempts.is_multiple_of(30) {
            tracing::warn!(
                "--console all: waiting for QEMU's display on {endpoint} to count its consoles ({err}); retrying every second"
            );
        }
        attempts += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Copy one QEMU connection's cursor into the server's feed (which outlives connections, so
/// clients follow a restarted QEMU) until that connection's cursor watch ends. Only real
/// changes are published; the feed keeps the newest state.
async fn follow_cursor(
    mut from: watch::Receiver<scanoutd_qemu::CursorState>,
    to: watch::Sender<CursorState>,
) {
    loop {
        let next = from.borrow_and_update().to_neutral();
        to.send_if_modified(|cur| {
            let changed = *cur != next;
            if changed {
                *cur = next;
            }
            changed
        });
        if from.changed().await.is_err() {
            return;
        }
    }
}

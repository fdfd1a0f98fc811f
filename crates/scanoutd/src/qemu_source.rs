//! The QEMU source: keeps a connection to a VM's D-Bus display, re-establishing it when QEMU
//! goes away and comes back (or ending the service, by option).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use scanoutd_qemu::{ConnectOptions, QemuDisplay};
use scanoutd_ring::FrameBus;
use scanoutd_types::{InputEvent, InputSink};

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

/// Connect to QEMU's D-Bus display at `address` and keep the bus fed. Returns only when QEMU
/// went away and `exit_on_close` is set (as an error), or never.
pub async fn run(
    address: String,
    console: Option<u32>,
    bus: FrameBus,
    input: Arc<SwitchableInput>,
    exit_on_close: bool,
) -> Result<()> {
    let mut attempts: u64 = 0;
    loop {
        let opts = ConnectOptions {
            console,
            wait_for_qemu: Duration::from_secs(1),
            ..ConnectOptions::default()
        };
        match QemuDisplay::connect(&address, bus.clone(), opts).await {
            Ok(vm) => {
                attempts = 0;
                tracing::info!(
                    "connected to the display of VM {:?}, console {} ({})",
                    vm.vm_name(),
                    vm.console_id(),
                    vm.console_label()
                );
                input.set(Some(Arc::new(vm.input())));
                let reason = vm.closed().await;
                input.set(None);
                tracing::warn!(
                    "QEMU's display went away ({reason:?}); clients keep the last picture"
                );
                if exit_on_close {
                    bail!("QEMU's display went away ({reason:?}) and --on-qemu-exit is exit");
                }
                tracing::info!("waiting for QEMU to come back on {address}");
            }
            Err(e) => {
                // Say it once, then every 30 attempts (about every half minute).
                if attempts.is_multiple_of(30) {
                    tracing::warn!("no QEMU display on {address} yet: {e}; retrying every second");
                }
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

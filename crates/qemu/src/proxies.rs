//! Client-side proxies for QEMU's `org.qemu.Display1` objects (the parts this crate uses).
//!
//! zbus derives D-Bus names from snake_case, which breaks `UUID` and `ConsoleIDs`; those are
//! named explicitly.

use zbus::proxy;

#[proxy(
    interface = "org.qemu.Display1.VM",
    default_path = "/org/qemu/Display1/VM"
)]
pub(crate) trait Vm {
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> zbus::Result<String>;

    #[zbus(property, name = "ConsoleIDs")]
    fn console_ids(&self) -> zbus::Result<Vec<u32>>;
}

#[proxy(interface = "org.qemu.Display1.Console", assume_defaults = false)]
pub(crate) trait Console {
    fn register_listener(&self, listener: zbus::Fd<'_>) -> zbus::Result<()>;

    #[zbus(property)]
    fn label(&self) -> zbus::Result<String>;

    #[zbus(property, name = "Type")]
    fn type_(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn head(&self) -> zbus::Result<u32>;

    #[zbus(property)]
    fn width(&self) -> zbus::Result<u32>;

    #[zbus(property)]
    fn height(&self) -> zbus::Result<u32>;
}

#[proxy(interface = "org.qemu.Display1.Keyboard", assume_defaults = false)]
pub(crate) trait Keyboard {
    fn press(&self, keycode: u32) -> zbus::Result<()>;

    fn release(&self, keycode: u32) -> zbus::Result<()>;
}

#[proxy(interface = "org.qemu.Display1.Mouse", assume_defaults = false)]
pub(crate) trait Mouse {
    fn press(&self, button: u32) -> zbus::Result<()>;

    fn release(&self, button: u32) -> zbus::Result<()>;

    fn set_abs_position(&self, x: u32, y: u32) -> zbus::Result<()>;

    fn rel_motion(&self, dx: i32, dy: i32) -> zbus::Result<()>;

    #[zbus(property)]
    fn is_absolute(&self) -> zbus::Result<bool>;
}

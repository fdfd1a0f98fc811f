//! Setting element properties from strings without ever panicking: unknown properties, values
//! that do not parse and read-only properties are reported (the caller warns and skips them);
//! numbers outside the property's range are clamped to it.

use glib::prelude::*;
use gstreamer as gst;
use gstreamer::prelude::*;

/// What happened to one property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Set as given.
    Set,
    /// Set, clamped to the property's range; the string is the value actually set.
    Clamped(String),
}

/// Sets `name` on `obj` from `value` (GStreamer's string syntax: numbers, enum nicks, flags
/// `a+b`, booleans). Returns why it could not be set instead of panicking.
pub(crate) fn set_from_str(obj: &gst::Element, name: &str, value: &str) -> Result<Applied, String> {
    let Some(pspec) = obj.find_property(name) else {
        return Err(format!("{} has no property {name}", factory_name(obj)));
    };
    let flags = pspec.flags();
    if !flags.contains(glib::ParamFlags::WRITABLE)
        || flags.contains(glib::ParamFlags::CONSTRUCT_ONLY)
    {
        return Err(format!("property {name} is not writable"));
    }
    let unsigned = pspec.is::<glib::ParamSpecUInt>() || pspec.is::<glib::ParamSpecUInt64>();
    if unsigned && value.trim_start().starts_with('-') {
        return Err(format!("property {name} is unsigned, got {value:?}"));
    }
    let parsed = glib::Value::deserialize_with_pspec(value, &pspec).map_err(|_| {
        format!(
            "cannot parse {value:?} as {} for property {name}",
            pspec.value_type()
        )
    })?;
    let (v, clamped) = clamp_to_range(&pspec, parsed);
    if !pspec.value_is_valid(&v) {
        return Err(format!("value {value:?} is not valid for property {name}"));
    }
    obj.set_property_from_value(name, &v);
    Ok(match clamped {
        Some(s) => Applied::Clamped(s),
        None => Applied::Set,
    })
}

/// Whether `name` may be changed while the pipeline is PLAYING.
pub(crate) fn mutable_in_playing(obj: &gst::Element, name: &str) -> bool {
    obj.find_property(name)
        .is_some_and(|p| p.flags().contains(gst::PARAM_FLAG_MUTABLE_PLAYING))
}

fn factory_name(obj: &gst::Element) -> String {
    obj.factory()
        .map(|f| f.name().to_string())
        .unwrap_or_else(|| obj.name().to_string())
}

macro_rules! clamp_num {
    ($pspec:expr, $v:expr, $spec_ty:ty, $num:ty) => {
        if let Some(p) = $pspec.downcast_ref::<$spec_ty>() {
            if let Ok(n) = $v.get::<$num>() {
                let c = n.clamp(p.minimum(), p.maximum());
                #[allow(clippy::float_cmp)]
                if c != n {
                    return (c.to_value(), Some(c.to_string()));
                }
            }
            return ($v, None);
        }
    };
}

fn clamp_to_range(pspec: &glib::ParamSpec, v: glib::Value) -> (glib::Value, Option<String>) {
    clamp_num!(pspec, v, glib::ParamSpecUInt, u32);
    clamp_num!(pspec, v, glib::ParamSpecInt, i32);
    clamp_num!(pspec, v, glib::ParamSpecUInt64, u64);
    clamp_num!(pspec, v, glib::ParamSpecInt64, i64);
    clamp_num!(pspec, v, glib::ParamSpecDouble, f64);
    clamp_num!(pspec, v, glib::ParamSpecFloat, f32);
    (v, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_clamps_and_refuses() {
        crate::init().unwrap();
        let Ok(enc) = gst::ElementFactory::make("x264enc").build() else {
            return; // x264enc not installed: nothing to check here
        };
        assert_eq!(set_from_str(&enc, "bframes", "0"), Ok(Applied::Set));
        assert_eq!(set_from_str(&enc, "tune", "zerolatency"), Ok(Applied::Set));
        assert_eq!(
            set_from_str(&enc, "speed-preset", "ultrafast"),
            Ok(Applied::Set)
        );
        // vbv-buf-capacity is 0..10000
        assert_eq!(
            set_from_str(&enc, "vbv-buf-capacity", "20000"),
            Ok(Applied::Clamped("10000".into()))
        );
        assert_eq!(enc.property::<u32>("vbv-buf-capacity"), 10000);
        assert!(set_from_str(&enc, "no-such-thing", "1")
            .unwrap_err()
            .contains("no property"));
        assert!(set_from_str(&enc, "tune", "not-a-tune").is_err());
        assert!(set_from_str(&enc, "bframes", "-1").is_err());
        assert!(mutable_in_playing(&enc, "bitrate"));
        assert!(!mutable_in_playing(&enc, "bframes"));
    }
}

//! Pipeline specs: one TOML file per encoder family (see `pipelines/README.md`).
//!
//! The files in `pipelines/` are compiled into the crate ([`builtin_specs`]) so the binary needs
//! no data files; a directory can override them by `name` or add new ones ([`load_specs`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::EncodeError;

/// The embedded pipeline files, in the order they are listed in `pipelines/`.
const BUILTIN: &[(&str, &str)] = &[
    (
        "vah264enc.toml",
        include_str!("../../../pipelines/vah264enc.toml"),
    ),
    (
        "vaapih264enc.toml",
        include_str!("../../../pipelines/vaapih264enc.toml"),
    ),
    (
        "nvh264enc.toml",
        include_str!("../../../pipelines/nvh264enc.toml"),
    ),
    (
        "qsvh264enc.toml",
        include_str!("../../../pipelines/qsvh264enc.toml"),
    ),
    (
        "x264enc.toml",
        include_str!("../../../pipelines/x264enc.toml"),
    ),
    (
        "openh264enc.toml",
        include_str!("../../../pipelines/openh264enc.toml"),
    ),
    (
        "vp8enc.toml",
        include_str!("../../../pipelines/vp8enc.toml"),
    ),
    (
        "vp9enc.toml",
        include_str!("../../../pipelines/vp9enc.toml"),
    ),
    (
        "jpegenc.toml",
        include_str!("../../../pipelines/jpegenc.toml"),
    ),
    (
        "vah265enc.toml",
        include_str!("../../../pipelines/vah265enc.toml"),
    ),
    (
        "nvh265enc.toml",
        include_str!("../../../pipelines/nvh265enc.toml"),
    ),
    (
        "x265enc.toml",
        include_str!("../../../pipelines/x265enc.toml"),
    ),
];

pub use scanoutd_types::Codec;

/// Codecs are written in the TOML files by their lowercase names (`h264`, `vp8`, ...).
fn de_codec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Codec, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// The raw format pinned in front of the encoder. Without it x264enc and jpegenc negotiate
/// 4:4:4, which is slower and not what clients expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum InputFormat {
    I420,
    NV12,
}

impl InputFormat {
    /// The GStreamer format name.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::I420 => "I420",
            InputFormat::NV12 => "NV12",
        }
    }
}

/// Unit of an element's bitrate property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BitrateUnit {
    #[serde(rename = "kbit/s")]
    Kbps,
    #[serde(rename = "bit/s")]
    Bps,
}

impl BitrateUnit {
    /// Converts a target in kbit/s to this unit.
    pub fn from_kbps(self, kbps: u32) -> u64 {
        match self {
            BitrateUnit::Kbps => u64::from(kbps),
            BitrateUnit::Bps => u64::from(kbps) * 1000,
        }
    }
}

/// Rate control by a bitrate property.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitrateControl {
    /// Element property that takes the target bitrate.
    pub property: String,
    /// Unit of that property.
    pub unit: BitrateUnit,
}

/// Rate control by a quality property (MJPEG: jpegenc has no bitrate).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityControl {
    /// Element property that takes the quality (for jpegenc `quality`, 0–100).
    pub property: String,
    /// Points `[bits per pixel per frame, quality]`, ascending; the target bitrate is turned
    /// into bits per pixel per frame and the quality interpolated linearly (clamped at the ends).
    pub curve: Vec<[f64; 2]>,
}

impl QualityControl {
    /// The quality for a target of `bpp` bits per pixel per frame.
    pub fn quality_for_bpp(&self, bpp: f64) -> i64 {
        let pts = &self.curve;
        let Some(first) = pts.first() else {
            return 75;
        };
        let last = pts[pts.len() - 1];
        let q = if bpp <= first[0] {
            first[1]
        } else if bpp >= last[0] {
            last[1]
        } else {
            pts.windows(2)
                .find(|w| bpp >= w[0][0] && bpp <= w[1][0])
                .map(|w| {
                    let t = (bpp - w[0][0]) / (w[1][0] - w[0][0]);
                    w[0][1] + t * (w[1][1] - w[0][1])
                })
                .unwrap_or(last[1])
        };
        q.round() as i64
    }
}

/// A parser after the encoder (e.g. `h264parse config-interval=-1` to repeat SPS/PPS before
/// every IDR when the encoder itself does not).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserSpec {
    pub element: String,
    #[serde(default, deserialize_with = "ordered_properties")]
    pub properties: Vec<(String, String)>,
}

/// One encoder family: which element, how to configure it for low latency, what it outputs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PipelineSpec {
    /// Unique name; a file loaded from a directory replaces the built-in spec of the same name.
    pub name: String,
    /// Free text for people and logs.
    #[serde(default)]
    pub description: String,
    #[serde(deserialize_with = "de_codec")]
    pub codec: Codec,
    /// GStreamer element factory name.
    pub element: String,
    /// Hardware encoders are preferred over software ones regardless of rank.
    pub hardware: bool,
    /// Preference within the same class (higher first).
    pub rank: i32,
    /// Raw format pinned before the encoder.
    pub input_format: InputFormat,
    /// Colorimetry pinned with it, in GStreamer's syntax (`"1:4:0:0"`: full-range BT.601, what
    /// a JFIF decoder assumes). Unset: videoconvert picks (limited range, BT.601 below 720p
    /// and BT.709 above) and the encoder signals it in the bitstream (H.264/H.265 VUI).
    #[serde(default)]
    pub input_colorimetry: Option<String>,
    /// Caps after the encoder (and parser), e.g. `video/x-h264,stream-format=byte-stream,alignment=au`.
    pub output_caps: String,
    /// Element properties in file order, values as strings (TOML numbers and booleans are
    /// accepted and converted). Values may use placeholders, see [`Placeholders`].
    #[serde(default, deserialize_with = "ordered_properties")]
    pub properties: Vec<(String, String)>,
    /// Rate control by bitrate (every family except MJPEG).
    #[serde(default)]
    pub bitrate: Option<BitrateControl>,
    /// Rate control by quality (MJPEG).
    #[serde(default)]
    pub quality: Option<QualityControl>,
    /// Optional parser between encoder and output caps.
    #[serde(default)]
    pub parser: Option<ParserSpec>,
}

impl PipelineSpec {
    /// Parses and validates one spec. `origin` names the source in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, EncodeError> {
        let spec: PipelineSpec = toml::from_str(text).map_err(|e| EncodeError::Spec {
            origin: origin.to_owned(),
            reason: e.to_string().trim_end().to_owned(),
        })?;
        spec.validate().map_err(|reason| EncodeError::Spec {
            origin: origin.to_owned(),
            reason,
        })?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        if self.element.trim().is_empty() {
            return Err("`element` is empty".into());
        }
        if self.output_caps.trim().is_empty() {
            return Err("`output-caps` is empty".into());
        }
        match (&self.bitrate, &self.quality) {
            (Some(_), Some(_)) => return Err("give either [bitrate] or [quality], not both".into()),
            (None, None) => return Err("one of [bitrate] or [quality] is required".into()),
            _ => {}
        }
        if let Some(q) = &self.quality {
            if q.curve.is_empty() {
                return Err("[quality] curve is empty".into());
            }
            if q.curve.windows(2).any(|w| w[1][0] <= w[0][0]) {
                return Err("[quality] curve must be sorted by bits per pixel, ascending".into());
            }
        }
        let mut all = self.properties.iter().collect::<Vec<_>>();
        if let Some(p) = &self.parser {
            all.extend(p.properties.iter());
        }
        for (name, value) in all {
            Placeholders::check(value).map_err(|e| format!("property {name}: {e}"))?;
        }
        Ok(())
    }
}

/// The values a property string may refer to as `{name}`:
///
/// | placeholder | value |
/// |---|---|
/// | `{width}`, `{height}`, `{fps}` | the encoder configuration |
/// | `{bitrate_kbps}`, `{bitrate_bps}` | the current target bitrate |
/// | `{frame_ms}` | one frame period in ms, rounded up (VBV of about one frame) |
/// | `{frame_kbit}`, `{frame_bits}` | the bits one frame may use at the target bitrate (≥ 1) |
/// | `{keyint}` | a long keyframe interval: 60 s of frames (keyframes are forced on demand) |
/// | `{threads}` | encoder threads: available cores, 1 to 4 |
///
/// Numbers outside an element's property range are clamped to it when applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placeholders {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

const PLACEHOLDER_NAMES: &[&str] = &[
    "width",
    "height",
    "fps",
    "bitrate_kbps",
    "bitrate_bps",
    "frame_ms",
    "frame_kbit",
    "frame_bits",
    "keyint",
    "threads",
];

impl Placeholders {
    fn value(&self, name: &str) -> Option<u64> {
        let fps = u64::from(self.fps.max(1));
        let kbps = u64::from(self.bitrate_kbps.max(1));
        Some(match name {
            "width" => u64::from(self.width),
            "height" => u64::from(self.height),
            "fps" => fps,
            "bitrate_kbps" => kbps,
            "bitrate_bps" => kbps * 1000,
            "frame_ms" => 1000_u64.div_ceil(fps),
            "frame_kbit" => kbps.div_ceil(fps).max(1),
            "frame_bits" => (kbps * 1000).div_ceil(fps).max(1),
            "keyint" => fps * 60,
            "threads" => std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(2)
                .clamp(1, 4),
            _ => return None,
        })
    }

    /// Substitutes every `{name}` in `template`.
    pub fn render(&self, template: &str) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {template:?}"))?;
            let name = &after[..close];
            let v = self
                .value(name)
                .ok_or_else(|| format!("unknown placeholder {{{name}}} in {template:?}"))?;
            out.push_str(&v.to_string());
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Checks that every placeholder in `template` is known.
    pub fn check(template: &str) -> Result<(), String> {
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {template:?}"))?;
            let name = &after[..close];
            if !PLACEHOLDER_NAMES.contains(&name) {
                return Err(format!("unknown placeholder {{{name}}} in {template:?}"));
            }
            rest = &after[close + 1..];
        }
        Ok(())
    }
}

/// The built-in specs (the `pipelines/*.toml` files compiled into the crate).
pub fn builtin_specs() -> Result<Vec<PipelineSpec>, EncodeError> {
    BUILTIN
        .iter()
        .map(|(file, text)| PipelineSpec::from_toml_str(text, &format!("(built-in) {file}")))
        .collect()
}

/// The built-in specs, with every `*.toml` in `dir` (when given) replacing the built-in spec
/// of the same `name` or adding a new one. Files are read in name order.
pub fn load_specs(dir: Option<&Path>) -> Result<Vec<PipelineSpec>, EncodeError> {
    let mut specs = builtin_specs()?;
    let Some(dir) = dir else {
        return Ok(specs);
    };
    let io = |source| EncodeError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| EncodeError::Io {
            path: path.clone(),
            source,
        })?;
        let spec = PipelineSpec::from_toml_str(&text, &path.display().to_string())?;
        match specs.iter_mut().find(|s| s.name == spec.name) {
            Some(slot) => {
                tracing::info!(name = %spec.name, file = %path.display(), "pipeline spec overridden");
                *slot = spec;
            }
            None => {
                tracing::info!(name = %spec.name, file = %path.display(), "pipeline spec added");
                specs.push(spec);
            }
        }
    }
    Ok(specs)
}

/// Deserialises a TOML table into `(name, value)` pairs in file order, accepting strings,
/// integers, floats and booleans as values.
fn ordered_properties<'de, D>(deserializer: D) -> Result<Vec<(String, String)>, D::Error>
where
    D: Deserializer<'de>,
{
    struct PropVisitor;

    impl<'de> Visitor<'de> for PropVisitor {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of property names to strings, numbers or booleans")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, String)> = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, PropValue>()? {
                if out.iter().any(|(name, _)| *name == k) {
                    return Err(de::Error::custom(format!("property {k} given twice")));
                }
                out.push((k, v.0));
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(PropVisitor)
}

struct PropValue(String);

impl<'de> Deserialize<'de> for PropValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PropValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PropValue, E> {
                Ok(PropValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropValue, E> {
                Ok(PropValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropValue, E> {
                Ok(PropValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropValue, E> {
                Ok(PropValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropValue, E> {
                Ok(PropValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Specs grouped by codec, best first (hardware, then rank) — a convenience for logs.
pub fn by_codec(specs: &[PipelineSpec]) -> BTreeMap<Codec, Vec<&PipelineSpec>> {
    let mut map: BTreeMap<Codec, Vec<&PipelineSpec>> = BTreeMap::new();
    for s in specs {
        map.entry(s.codec).or_default().push(s);
    }
    for v in map.values_mut() {
        v.sort_by_key(|s| (std::cmp::Reverse(s.hardware), std::cmp::Reverse(s.rank)));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_specs_parse_and_are_unique() {
        let specs = builtin_specs().unwrap();
        assert_eq!(specs.len(), BUILTIN.len());
        for (i, s) in specs.iter().enumerate() {
            assert!(
                specs[..i].iter().all(|o| o.name != s.name),
                "duplicate {}",
                s.name
            );
        }
        for codec in Codec::ALL {
            assert!(
                specs.iter().any(|s| s.codec == codec),
                "no spec for {codec}"
            );
        }
        // hardware ranks above software: every hardware rank exceeds every software rank
        let max_sw = specs.iter().filter(|s| !s.hardware).map(|s| s.rank).max();
        let min_hw = specs.iter().filter(|s| s.hardware).map(|s| s.rank).min();
        assert!(min_hw > max_sw);
    }

    #[test]
    fn placeholders_render() {
        let p = Placeholders {
            width: 1920,
            height: 1080,
            fps: 30,
            bitrate_kbps: 4000,
        };
        assert_eq!(p.render("{frame_ms}").unwrap(), "34");
        assert_eq!(p.render("{frame_kbit}").unwrap(), "134");
        assert_eq!(p.render("{bitrate_bps}").unwrap(), "4000000");
        assert_eq!(p.render("a={keyint}:b=0").unwrap(), "a=1800:b=0");
        assert!(p.render("{nope}").is_err());
        assert!(p.render("{open").is_err());
        assert!(Placeholders::check("{frame_bits}").is_ok());
        assert!(Placeholders::check("{frame_bytes}").is_err());
    }

    #[test]
    fn spec_errors_are_clear() {
        let base = r#"
            name = "t"
            codec = "h264"
            element = "x264enc"
            hardware = false
            rank = 1
            input-format = "I420"
            output-caps = "video/x-h264"
        "#;
        let e = PipelineSpec::from_toml_str(base, "t.toml").unwrap_err();
        assert!(e.to_string().contains("[bitrate] or [quality]"), "{e}");
        let ok = format!("{base}\n[bitrate]\nproperty = \"bitrate\"\nunit = \"kbit/s\"\n");
        let spec = PipelineSpec::from_toml_str(&ok, "t.toml").unwrap();
        assert_eq!(spec.bitrate.unwrap().unit, BitrateUnit::Kbps);
        let bad_codec = ok.replace("\"h264\"", "\"av2\"");
        assert!(PipelineSpec::from_toml_str(&bad_codec, "t.toml").is_err());
        let unknown = format!("{ok}\nbogus = 1\n");
        assert!(PipelineSpec::from_toml_str(&unknown, "t.toml").is_err());
        let props = format!(
            "{base}\n[properties]\nzeta = 1\nalpha = true\nmid = \"{{keyint}}\"\n[bitrate]\nproperty = \"bitrate\"\nunit = \"bit/s\"\n"
        );
        let spec = PipelineSpec::from_toml_str(&props, "t.toml").unwrap();
        assert_eq!(
            spec.properties,
            vec![
                ("zeta".to_owned(), "1".to_owned()),
                ("alpha".to_owned(), "true".to_owned()),
                ("mid".to_owned(), "{keyint}".to_owned())
            ]
        );
    }

    #[test]
    fn quality_curve_interpolates() {
        let q = QualityControl {
            property: "quality".into(),
            curve: vec![[0.1, 20.0], [0.5, 60.0], [1.0, 80.0]],
        };
        assert_eq!(q.quality_for_bpp(0.0), 20);
        assert_eq!(q.quality_for_bpp(0.3), 40);
        assert_eq!(q.quality_for_bpp(0.75), 70);
        assert_eq!(q.quality_for_bpp(5.0), 80);
    }

    #[test]
    fn codec_from_str() {
        assert_eq!("H264".parse::<Codec>().unwrap(), Codec::H264);
        assert!("av1".parse::<Codec>().is_err());
    }

    #[test]
    fn load_specs_overrides_by_name() {
        let dir = std::env::temp_dir().join(format!("scanoutd-encode-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = r#"
            name = "x264enc"
            codec = "h264"
            element = "x264enc"
            hardware = false
            rank = 7
            input-format = "NV12"
            output-caps = "video/x-h264,stream-format=byte-stream,alignment=au"
            [bitrate]
            property = "bitrate"
            unit = "kbit/s"
        "#;
        std::fs::write(dir.join("x264enc.toml"), text).unwrap();
        std::fs::write(
            dir.join("new.toml"),
            text.replace(
                "\"x264enc\"\n            codec",
                "\"mine\"\n            codec",
            ),
        )
        .unwrap();
        std::fs::write(dir.join("ignored.txt"), "not toml").unwrap();
        let specs = load_specs(Some(&dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let x = specs.iter().find(|s| s.name == "x264enc").unwrap();
        assert_eq!(x.rank, 7);
        assert_eq!(x.input_format, InputFormat::NV12);
        assert!(specs.iter().any(|s| s.name == "mine"));
        assert_eq!(specs.len(), BUILTIN.len() + 1);
    }
}

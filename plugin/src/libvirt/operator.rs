//! Domains operators write themselves: what the adapter reads of a domain XML (as libvirt's
//! hook script receives it), and the checks a domain must pass before the backend gives it a
//! region.
//!
//! ```text
//!  <domain>  <name>D</name>
//!    <metadata> <nexus:vm xmlns:nexus='https://nexus.dev/libvirt/1' function='F'/>
//!    <seclabel type='static' model='dac'><label>USER:GROUP</label>   (optional: QEMU's user)
//!    <devices>
//!      <shmem name='nexus-D.region'> <model type='ivshmem-plain'/> <size unit='b'>region.size</size>
//!      <channel type='unix'> <source mode='connect' path='DOORBELLS/D.sock'/>
//!                            <target type='virtio' name='org.nexus.doorbell'/>
//! ```
//!
//! **Which domains are Nexus's.** One with the Nexus metadata, or with a `<shmem>` whose name
//! starts with `nexus-`: a domain without the metadata is refused such a region, since it
//! could be another domain's. The metadata `managed='backend'` marks the domains the adapter
//! defines (domain.rs); the backend needs no hook for those.
//!
//! **Ownership.** A domain is given only its own region, `nexus-<its name>.region`, so no
//! domain can name another's; the file is handed to the user QEMU runs as for that domain
//! (its static DAC label, else qemu.conf's `user`/`group`, else libvirt-qemu) with mode 0600.

use std::path::{Path, PathBuf};

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::{NsReader, XmlVersion};

use super::domain::{DOORBELL_PORT, METADATA_NS};

/// libvirt's QEMU driver configuration, where the default QEMU user is set.
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
/// The user and group QEMU runs as when qemu.conf sets none (Debian's build of libvirt).
const DEFAULT_QEMU_USER: &str = "libvirt-qemu";

/// Why a domain cannot have a Nexus region. The message reaches the operator through
/// libvirt's error for `virsh start`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    /// The XML does not parse.
    #[error("The domain XML does not parse: {0}")]
    Xml(String),
    /// The domain names no function.
    #[error(
        "Domain {0}: its Nexus metadata names no function: \
         <nexus:vm xmlns:nexus='{METADATA_NS}' function='NAME'/>"
    )]
    NoFunction(String),
    /// Something about its region is wrong.
    #[error("Domain {domain}: {reason}")]
    Region { domain: String, reason: String },
    /// Its doorbell channel is missing or wrong.
    #[error(
        "Domain {domain}: {reason}: add <channel type='unix'><source mode='connect' \
         path='{expected}'/><target type='virtio' name='{DOORBELL_PORT}'/></channel>"
    )]
    Doorbell { domain: String, reason: String, expected: String },
    /// The user QEMU runs as cannot be resolved.
    #[error("Domain {domain}: cannot find the user or group {name} that QEMU runs as")]
    Owner { domain: String, name: String },
}

/// What a domain is to Nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing: no Nexus metadata and no `nexus-` region.
    Other,
    /// Defined by the libvirt adapter for a function VM.
    Managed,
    /// An operator's domain asking for a Nexus region.
    Operator,
}

/// The parts of a domain XML the adapter reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DomainXml {
    pub name: String,
    /// The Nexus metadata: the function named (if any) and whether the adapter defined it.
    metadata: Option<(Option<String>, bool)>,
    shmems: Vec<Shmem>,
    /// Unix channels: (source mode, source path, target name).
    channels: Vec<(String, String, String)>,
    /// Its `<seclabel>`s: (model, type, label).
    seclabels: Vec<(String, String, String)>,
    /// Where the console goes, if to a file.
    serial_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Shmem {
    name: String,
    model: String,
    /// Bytes per unit of its `<size>`.
    scale: u64,
    /// In bytes.
    size: Option<u64>,
}

/// What the backend requires of an operator's domain.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The backend's region size in bytes.
    pub region_size: u64,
    /// Where the doorbell sockets of operators' domains are: `<dir>/<domain>.sock`.
    pub doorbell_dir: &'a Path,
}

/// An operator's domain that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorDomain {
    pub name: String,
    pub function: String,
    /// The region's name under `/dev/shm`.
    pub shmem: String,
    pub doorbell: PathBuf,
    /// The user and group QEMU runs as: the region file's owner.
    pub owner: (u32, u32),
    pub serial_log: PathBuf,
}

impl DomainXml {
    /// Reads `xml`, a libvirt domain definition.
    pub fn parse(xml: &str) -> Result<DomainXml, DomainError> {
        let mut reader = NsReader::from_str(xml);
        reader.config_mut().trim_text(true);
        let mut domain = DomainXml::default();
        // The local names of the open elements, outermost first.
        let mut path: Vec<String> = Vec::new();
        let bad = |e: &dyn std::fmt::Display| DomainError::Xml(e.to_string());
        loop {
            let (ns, event) = reader.read_resolved_event().map_err(|e| bad(&e))?;
            let nexus =
                matches!(ns, ResolveResult::Bound(n) if n.as_ref() == METADATA_NS.as_bytes());
            match event {
                Event::Start(e) => {
                    domain.element(&path, &e, nexus)?;
                    path.push(local(&e));
                }
                Event::Empty(e) => domain.element(&path, &e, nexus)?,
                Event::Text(t) => {
                    let text = t.decode().map_err(|e| bad(&e))?.into_owned();
                    domain.text(&path, text)?;
                }
                Event::End(_) => {
                    path.pop();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if domain.name.is_empty() {
            return Err(DomainError::Xml("no <name>".into()));
        }
        Ok(domain)
    }

    /// Whether and how the domain is Nexus's.
    pub fn kind(&self) -> Kind {
        match &self.metadata {
            Some((_, true)) => Kind::Managed,
            Some(_) => Kind::Operator,
            None if self.shmems.iter().any(|s| s.name.starts_with("nexus-")) => Kind::Operator,
            None => Kind::Other,
        }
    }

    /// The region name a domain called `domain` may have.
    pub fn region_name(domain: &str) -> String {
        format!("nexus-{domain}.region")
    }

    /// Checks an operator's domain against what the backend requires.
    pub fn check(&self, expected: &Expected<'_>) -> Result<OperatorDomain, DomainError> {
        let name = &self.name;
        let region_error = |reason: String| DomainError::Region { domain: name.clone(), reason };
        let function = match &self.metadata {
            Some((Some(function), _)) => function.clone(),
            Some((None, _)) => return Err(DomainError::NoFunction(name.clone())),
            None => {
                return Err(region_error(format!(
                    "it has a Nexus region but no Nexus metadata naming its function: \
                     <nexus:vm xmlns:nexus='{METADATA_NS}' function='NAME'/>"
                )))
            }
        };
        let own = Self::region_name(name);
        let shmem = match self.shmems.as_slice() {
            [] => {
                return Err(region_error(format!(
                    "no <shmem> for its Nexus region: add <shmem name='{own}'>\
                     <model type='ivshmem-plain'/><size unit='b'>{}</size></shmem>",
                    expected.region_size
                )))
            }
            [one] => one,
            _ => return Err(region_error("more than one <shmem>: a domain has one region".into())),
        };
        if shmem.name != own {
            return Err(region_error(format!(
                "<shmem name='{}'> is not its region: a domain is given only its own, named {own}",
                shmem.name
            )));
        }
        if shmem.model != "ivshmem-plain" {
            let reason =
                format!("its <shmem> must be <model type='ivshmem-plain'/>, not {:?}", shmem.model);
            return Err(region_error(reason));
        }
        if shmem.size != Some(expected.region_size) {
            let size = shmem.size.map_or("of no <size>".to_owned(), |s| format!("{s} bytes"));
            return Err(region_error(format!(
                "its <shmem> is {size}; this backend's regions are {} bytes (region.size): \
                 <size unit='b'>{}</size>",
                expected.region_size, expected.region_size
            )));
        }
        let doorbell = expected.doorbell_dir.join(format!("{name}.sock"));
        let doorbell_error = |reason: String| DomainError::Doorbell {
            domain: name.clone(),
            reason,
            expected: doorbell.display().to_string(),
        };
        let channel = self.channels.iter().find(|(_, _, target)| target == DOORBELL_PORT);
        match channel {
            None => return Err(doorbell_error("no doorbell channel".into())),
            Some((mode, path, _)) if mode != "connect" || Path::new(path) != doorbell => {
                let reason =
                    format!("its doorbell channel is <source mode='{mode}' path='{path}'>");
                return Err(doorbell_error(reason));
            }
            Some(_) => {}
        }
        let owner = self.qemu_owner(&read_qemu_conf())?;
        let serial_log = self
            .serial_file
            .clone()
            .unwrap_or_else(|| Path::new("/var/log/libvirt/qemu").join(format!("{name}.log")));
        Ok(OperatorDomain { name: name.clone(), function, shmem: own, doorbell, owner, serial_log })
    }

    /// The user and group QEMU runs as for this domain: its static DAC label, else `conf`'s
    /// (qemu.conf) `user` and `group`, else libvirt-qemu.
    fn qemu_owner(&self, conf: &str) -> Result<(u32, u32), DomainError> {
        let label =
            self.seclabels.iter().find(|(model, kind, _)| model == "dac" && kind == "static");
        let (user, group) = match label.and_then(|(_, _, label)| label.split_once(':')) {
            Some((user, group)) => (user.to_owned(), group.to_owned()),
            None => {
                let setting = |key: &str| {
                    conf.lines().find_map(|line| {
                        let (k, v) = line.split_once('=')?;
                        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
                    })
                };
                let user = setting("user").unwrap_or_else(|| DEFAULT_QEMU_USER.into());
                (user, setting("group").unwrap_or_else(|| DEFAULT_QEMU_USER.into()))
            }
        };
        let find = |name: &str, table: &str| {
            id_of(name, table)
                .ok_or_else(|| DomainError::Owner { domain: self.name.clone(), name: name.into() })
        };
        Ok((find(&user, "/etc/passwd")?, find(&group, "/etc/group")?))
    }

    /// Notes an element (start or empty) found inside `path`.
    fn element(
        &mut self,
        path: &[String],
        e: &BytesStart<'_>,
        nexus: bool,
    ) -> Result<(), DomainError> {
        let at: Vec<&str> = path.iter().map(String::as_str).collect();
        let attr = |key: &str| attribute(e, key);
        match (at.as_slice(), local(e).as_str()) {
            (["domain", "metadata"], "vm") if nexus => {
                let managed = attr("managed")?.as_deref() == Some("backend");
                self.metadata = Some((attr("function")?.filter(|f| !f.is_empty()), managed));
            }
            (["domain", "devices"], "shmem") => self
                .shmems
                .push(Shmem { name: attr("name")?.unwrap_or_default(), ..Shmem::default() }),
            (["domain", "devices", "shmem"], "model") => {
                if let Some(shmem) = self.shmems.last_mut() {
                    shmem.model = attr("type")?.unwrap_or_default();
                }
            }
            (["domain", "devices", "shmem"], "size") => {
                if let Some(shmem) = self.shmems.last_mut() {
                    shmem.scale =
                        unit_scale(&attr("unit")?.unwrap_or_default()).ok_or_else(|| {
                            DomainError::Xml("a <shmem> <size> of an unknown unit".into())
                        })?;
                }
            }
            (["domain", "devices"], "channel") if attr("type")?.as_deref() == Some("unix") => {
                self.channels.push(Default::default())
            }
            (["domain", "devices", "channel"], "source") => {
                if let Some(channel) = self.channels.last_mut() {
                    channel.0 = attr("mode")?.unwrap_or_default();
                    channel.1 = attr("path")?.unwrap_or_default();
                }
            }
            (["domain", "devices", "channel"], "target") => {
                if let Some(channel) = self.channels.last_mut() {
                    channel.2 = attr("name")?.unwrap_or_default();
                }
            }
            (["domain", "devices", "serial"], "source") => {
                self.serial_file = attr("path")?.map(PathBuf::from);
            }
            (["domain"], "seclabel") => self.seclabels.push((
                attr("model")?.unwrap_or_default(),
                attr("type")?.unwrap_or_default(),
                String::new(),
            )),
            _ => {}
        }
        Ok(())
    }

    /// Notes the text of the innermost element of `path`.
    fn text(&mut self, path: &[String], text: String) -> Result<(), DomainError> {
        let at: Vec<&str> = path.iter().map(String::as_str).collect();
        match at.as_slice() {
            ["domain", "name"] => self.name = text,
            ["domain", "devices", "shmem", "size"] => {
                if let Some(shmem) = self.shmems.last_mut() {
                    let scale = shmem.scale.max(1);
                    let value: u64 = text.trim().parse().map_err(|_| {
                        DomainError::Xml(format!("<shmem> <size> {text:?} is not a number"))
                    })?;
                    shmem.size = Some(value.checked_mul(scale).ok_or_else(|| {
                        DomainError::Xml(format!("<shmem> <size> {text} is too large"))
                    })?);
                }
            }
            ["domain", "seclabel", "label"] => {
                if let Some(seclabel) = self.seclabels.last_mut() {
                    seclabel.2 = text.trim().to_owned();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The local name of an element.
fn local(e: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.local_name().as_ref()).into_owned()
}

/// The unescaped value of attribute `key` of `e`.
fn attribute(e: &BytesStart<'_>, key: &str) -> Result<Option<String>, DomainError> {
    let found = e.try_get_attribute(key).map_err(|err| DomainError::Xml(err.to_string()))?;
    found
        .map(|a| a.normalized_value(XmlVersion::Implicit1_0).map(|v| v.into_owned()))
        .transpose()
        .map_err(|err| DomainError::Xml(err.to_string()))
}

/// Bytes per unit of a libvirt scaled size (`b`, `KiB`/`k`, `KB`, `MiB`/`M`, `MB`, …); no
/// unit is bytes.
fn unit_scale(unit: &str) -> Option<u64> {
    let power = |p: u32, base: u64| base.checked_pow(p);
    match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => Some(1),
        "k" | "kib" => power(1, 1024),
        "kb" => power(1, 1000),
        "m" | "mib" => power(2, 1024),
        "mb" => power(2, 1000),
        "g" | "gib" => power(3, 1024),
        "gb" => power(3, 1000),
        "t" | "tib" => power(4, 1024),
        "tb" => power(4, 1000),
        _ => None,
    }
}

/// qemu.conf's text, empty if there is none.
fn read_qemu_conf() -> String {
    std::fs::read_to_string(QEMU_CONF).unwrap_or_default()
}

/// The id of `name` in `table` (`/etc/passwd` or `/etc/group`); `+N` is the id N.
fn id_of(name: &str, table: &str) -> Option<u32> {
    if let Some(id) = name.strip_prefix('+') {
        return id.parse().ok();
    }
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn xml(name: &str, metadata: &str, devices: &str) -> String {
        format!(
            "<domain type='qemu'><name>{name}</name><metadata>{metadata}</metadata>\
             <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>\
             <devices><serial type='file'><source path='/var/log/{name}.console'/></serial>\
             {devices}</devices></domain>"
        )
    }

    fn metadata(function: &str) -> String {
        format!("<n:vm xmlns:n='{METADATA_NS}' function='{function}'/>")
    }

    fn devices(shmem: &str, size: &str, doorbell: &str) -> String {
        format!(
            "<shmem name='{shmem}' role='master'><model type='ivshmem-plain'/>{size}</shmem>\
             <channel type='unix'><source mode='connect' path='{doorbell}'/>\
             <target type='virtio' name='{DOORBELL_PORT}'/></channel>"
        )
    }

    fn expected() -> Expected<'static> {
        Expected { region_size: 32 * MIB, doorbell_dir: Path::new("/var/lib/nexus/libvirt") }
    }

    fn check(xml: &str) -> Result<OperatorDomain, DomainError> {
        DomainXml::parse(xml).unwrap().check(&expected())
    }

    #[test]
    fn a_well_formed_operator_domain_passes_with_its_owner_and_console() {
        let good = xml(
            "web",
            &metadata("thumbs"),
            &devices(
                "nexus-web.region",
                "<size unit='M'>32</size>",
                "/var/lib/nexus/libvirt/web.sock",
            ),
        );
        let parsed = DomainXml::parse(&good).unwrap();
        assert_eq!(parsed.kind(), Kind::Operator);
        assert_eq!(
            parsed.check(&expected()).unwrap(),
            OperatorDomain {
                name: "web".into(),
                function: "thumbs".into(),
                shmem: "nexus-web.region".into(),
                doorbell: "/var/lib/nexus/libvirt/web.sock".into(),
                owner: (0, 0),
                serial_log: "/var/log/web.console".into(),
            }
        );
    }

    #[test]
    fn each_wrong_part_is_refused_with_what_to_do() {
        let doorbell = "/var/lib/nexus/libvirt/web.sock";
        let size = "<size unit='b'>33554432</size>";
        let cases = [
            (metadata(""), devices("nexus-web.region", size, doorbell), "names no function"),
            (metadata("f"), devices("nexus-db.region", size, doorbell), "is not its region: a domain is given only its own, named nexus-web.region"),
            (metadata("f"), devices("nexus-web.region", "<size unit='M'>16</size>", doorbell), "is 16777216 bytes; this backend's regions are 33554432 bytes"),
            (metadata("f"), devices("nexus-web.region", size, "/tmp/other.sock"), "its doorbell channel is <source mode='connect' path='/tmp/other.sock'>: add <channel"),
            (metadata("f"), String::new(), "no <shmem> for its Nexus region: add <shmem name='nexus-web.region'>"),
            (String::new(), devices("nexus-db.region", size, doorbell), "a Nexus region but no Nexus metadata"),
        ];
        for (metadata, devices, message) in cases {
            let error = check(&xml("web", &metadata, &devices)).unwrap_err().to_string();
            assert!(error.starts_with("Domain web: ") || error.contains("Domain web"), "{error}");
            assert!(error.contains(message), "{message:?} not in {error:?}");
        }
    }

    #[test]
    fn kinds_and_unrelated_domains() {
        let kind = |x: String| DomainXml::parse(&x).unwrap().kind();
        assert_eq!(kind(xml("a", "", "")), Kind::Other);
        assert_eq!(kind(xml("a", "<other xmlns='urn:x' function='f'/>", "")), Kind::Other);
        let managed = format!("<n:vm xmlns:n='{METADATA_NS}' function='f' managed='backend'/>");
        assert_eq!(kind(xml("a", &managed, "")), Kind::Managed);
        let thief = devices("nexus-b.region", "", "/x");
        assert_eq!(kind(xml("a", "", &thief)), Kind::Operator, "a nexus- region alone is checked");
        assert!(matches!(DomainXml::parse("<domain>"), Err(DomainError::Xml(_))));
    }

    #[test]
    fn qemu_runs_as_the_dac_label_else_qemu_conf_else_libvirt_qemu() {
        let mut domain = DomainXml { name: "d".into(), ..DomainXml::default() };
        assert_eq!(domain.qemu_owner("user = \"+5\"\ngroup = \"+6\"\n"), Ok((5, 6)));
        let dac = |label: &str| vec![("dac".into(), "static".into(), label.into())];
        domain.seclabels = dac("+7:+8");
        assert_eq!(domain.qemu_owner("user = \"+5\""), Ok((7, 8)));
        domain.seclabels = dac("root:root");
        assert_eq!(domain.qemu_owner(""), Ok((0, 0)));
        domain.seclabels = dac("nobody-such:root");
        let error = domain.qemu_owner("").unwrap_err().to_string();
        assert!(error.contains("cannot find the user or group nobody-such"), "{error}");
    }

    #[test]
    fn sizes_scale_by_their_unit() {
        assert_eq!(unit_scale(""), Some(1));
        assert_eq!(unit_scale("KiB"), Some(1024));
        assert_eq!(unit_scale("M"), Some(MIB));
        assert_eq!(unit_scale("MB"), Some(1_000_000));
        assert_eq!(unit_scale("parsecs"), None);
    }
}

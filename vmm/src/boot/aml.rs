//! A small AML (ACPI Machine Language) byte-code builder.
//!
//! The DSDT describes the guest's non-enumerable devices as AML (ACPI 6.5
//! chapter 20). rvmm has no ASL compiler at run time, so it builds the
//! byte code directly from small structs that each implement [`Aml`] and
//! nest like the ASL they stand for:
//!
//! ```text
//! Scope::new("\\_SB_", vec![
//!     Box::new(Device::new("COM1", vec![
//!         Box::new(Name::new("_HID", EisaId::new("PNP0501")?)?),
//!     ])?),
//! ])?
//! ```
//!
//! Only what rvmm needs is covered: names, integers, strings, `Name`,
//! `Package`, `Scope`, `Device`, `Method` with a `Return`, `Buffer`,
//! `EISAID` and `ResourceTemplate` with IO, IRQNoFlags, Memory32Fixed and
//! Word/DWord/QWord address space descriptors (the last for a PCI host
//! bridge's `_CRS`). Section numbers below are those of ACPI 6.5.

use thiserror::Error;

/// Errors from building AML.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AmlError {
    /// A NameSeg is 1-4 characters: a lead character `A-Z` or `_`, then
    /// `A-Z`, `0-9` or `_` (§20.2.2); shorter ones are padded with `_`.
    #[error("invalid AML name {0:?}: each segment needs 1-4 chars, first A-Z or '_', rest A-Z, 0-9 or '_'")]
    InvalidName(String),
    /// MultiNamePath stores the segment count in one byte (§20.2.2).
    #[error("AML name {0:?} has more than 255 segments")]
    TooManySegments(String),
    /// PkgLength encodes at most 28 bits (§20.2.4).
    #[error("AML object body of {0} bytes exceeds the 2^28-1 bytes a PkgLength can encode")]
    PkgLengthTooLarge(usize),
    /// Package stores its element count in one byte (§20.2.5.4).
    #[error("AML Package has {0} elements, more than the 255 a Package can hold")]
    TooManyPackageElements(usize),
    /// AML strings are ASCII 0x01-0x7F, NUL terminated (§20.2.3).
    #[error("AML string {0:?} contains a character outside ASCII 0x01-0x7F")]
    InvalidString(String),
    /// EISA IDs are 3 upper-case letters and 4 hex digits (§19.6.35).
    #[error("invalid EISA ID {0:?}: want 3 upper-case letters then 4 hex digits, like \"PNP0501\"")]
    InvalidEisaId(String),
    /// MethodFlags has 3 bits for the argument count (§20.2.5.2).
    #[error("AML Method declares {0} arguments, more than the 7 allowed")]
    TooManyMethodArgs(u8),
    /// MethodFlags has 4 bits for the sync level (§20.2.5.2).
    #[error("AML Method sync level {0} is more than 15")]
    InvalidSyncLevel(u8),
    /// The IRQ descriptor is a 16-bit mask of IRQs 0-15 (§6.4.2.1).
    #[error("IRQ {0} does not fit an IRQ descriptor, which covers IRQs 0-15")]
    InvalidIrq(u8),
    /// A resource's minimum must not exceed its maximum (§6.4.2.5, §6.4.3.5).
    #[error("resource range {min:#x}-{max:#x} has its minimum above its maximum")]
    InvalidRange {
        /// Requested minimum address.
        min: u64,
        /// Requested maximum address.
        max: u64,
    },
    /// An address space descriptor's fields must fit the chosen width.
    #[error("resource value {value:#x} does not fit a {width:?} address space descriptor")]
    AddressTooWide {
        /// The offending value.
        value: u64,
        /// The descriptor width asked for.
        width: AddressWidth,
    },
}

/// Something that can be encoded as AML byte code.
pub trait Aml {
    /// Appends this object's AML encoding to `out`.
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError>;

    /// Returns this object's AML encoding as a new vector.
    fn to_aml_vec(&self) -> Result<Vec<u8>, AmlError> {
        let mut out = Vec::new();
        self.to_aml_bytes(&mut out)?;
        Ok(out)
    }
}

/// A list of AML objects, as held by `Scope`, `Device`, `Method` bodies
/// and `Package` elements.
pub type AmlList = Vec<Box<dyn Aml>>;

impl Aml for [Box<dyn Aml>] {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        for item in self {
            item.to_aml_bytes(out)?;
        }
        Ok(())
    }
}

impl<T: Aml + ?Sized> Aml for Box<T> {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        (**self).to_aml_bytes(out)
    }
}

// Opcodes and prefixes (§20.2).
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0A;
const WORD_PREFIX: u8 = 0x0B;
const DWORD_PREFIX: u8 = 0x0C;
const STRING_PREFIX: u8 = 0x0D;
const QWORD_PREFIX: u8 = 0x0E;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const METHOD_OP: u8 = 0x14;
const DUAL_NAME_PREFIX: u8 = 0x2E;
const MULTI_NAME_PREFIX: u8 = 0x2F;
const EXT_OP_PREFIX: u8 = 0x5B;
const ROOT_CHAR: u8 = b'\\';
const PARENT_PREFIX_CHAR: u8 = b'^';
const DEVICE_OP: u8 = 0x82; // after EXT_OP_PREFIX
const RETURN_OP: u8 = 0xA4;
const ONES_OP: u8 = 0xFF;

/// Largest value a PkgLength can encode: 4 bits + 3 bytes (§20.2.4).
pub const MAX_PKG_LENGTH: usize = (1 << 28) - 1;

/// Appends the PkgLength encoding of `value` (§20.2.4), where `value`
/// already counts the PkgLength bytes themselves.
///
/// One byte holds 0-63 in its low 6 bits. Longer values use 1-3 more
/// bytes: bits 7-6 of the lead byte give that count, its low 4 bits hold
/// the least significant nibble, each following byte the next 8 bits.
pub fn encode_pkg_length(value: usize, out: &mut Vec<u8>) -> Result<(), AmlError> {
    let follow: u8 = match value {
        0..=0x3F => {
            out.push(value as u8);
            return Ok(());
        }
        0x40..=0xFFF => 1,
        0x1000..=0xF_FFFF => 2,
        0x10_0000..=MAX_PKG_LENGTH => 3,
        _ => return Err(AmlError::PkgLengthTooLarge(value)),
    };
    out.push((follow << 6) | (value & 0x0F) as u8);
    for i in 0..follow {
        out.push((value >> (4 + 8 * u32::from(i))) as u8);
    }
    Ok(())
}

/// Appends the PkgLength for a body of `body_len` bytes that follows it:
/// the encoded value covers the PkgLength itself, so pick the shortest
/// encoding whose size plus the body still fits (§20.2.4).
fn encode_pkg_length_for_body(body_len: usize, out: &mut Vec<u8>) -> Result<(), AmlError> {
    let too_large = AmlError::PkgLengthTooLarge(body_len);
    let total = if body_len < 0x3F {
        body_len + 1
    } else if body_len < 0xFFF - 1 {
        body_len + 2
    } else if body_len < 0xF_FFFF - 2 {
        body_len + 3
    } else {
        body_len.checked_add(4).ok_or(too_large)?
    };
    encode_pkg_length(total, out)
}

/// Appends `opcode`, a PkgLength and `body`: the shape of every
/// variable-length AML object (§20.2.5).
fn write_pkg(out: &mut Vec<u8>, opcode: &[u8], body: &[u8]) -> Result<(), AmlError> {
    out.extend_from_slice(opcode);
    encode_pkg_length_for_body(body.len(), out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// A NameString (§20.2.2): an optional root `\` or parent `^` prefixes,
/// then zero or more 4-character NameSegs separated by `.` in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    root: bool,
    parents: usize,
    segments: Vec<[u8; 4]>,
}

impl Path {
    /// Parses an ASL-style name such as `"_HID"`, `"\\_SB.COM1"` or
    /// `"^PCI0"`; segments shorter than 4 characters are padded with `_`
    /// as ASL does (so `"_SB"` is `_SB_`).
    pub fn new(name: &str) -> Result<Self, AmlError> {
        let invalid = || AmlError::InvalidName(name.to_string());
        let root = name.starts_with('\\');
        let rest = name.strip_prefix('\\').unwrap_or(name);
        let trimmed = rest.trim_start_matches('^');
        let parents = rest.len().saturating_sub(trimmed.len());
        if root && parents > 0 {
            return Err(invalid());
        }
        let mut segments = Vec::new();
        if !trimmed.is_empty() {
            for seg in trimmed.split('.') {
                segments.push(name_seg(seg).ok_or_else(invalid)?);
            }
        } else if !root && parents == 0 {
            // An empty string is no name at all.
            return Err(invalid());
        }
        if segments.len() > 255 {
            return Err(AmlError::TooManySegments(name.to_string()));
        }
        Ok(Self { root, parents, segments })
    }
}

/// Validates and pads one NameSeg (§20.2.2).
fn name_seg(seg: &str) -> Option<[u8; 4]> {
    let bytes = seg.as_bytes();
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    let lead_ok = |c: u8| c.is_ascii_uppercase() || c == b'_';
    let mut out = [b'_'; 4];
    for (i, &c) in bytes.iter().enumerate() {
        if !(lead_ok(c) || (i > 0 && c.is_ascii_digit())) {
            return None;
        }
        *out.get_mut(i)? = c;
    }
    Some(out)
}

impl Aml for Path {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        if self.root {
            out.push(ROOT_CHAR);
        }
        out.extend(std::iter::repeat(PARENT_PREFIX_CHAR).take(self.parents));
        match self.segments.as_slice() {
            [] => out.push(ZERO_OP), // NullName
            [one] => out.extend_from_slice(one),
            [a, b] => {
                out.push(DUAL_NAME_PREFIX);
                out.extend_from_slice(a);
                out.extend_from_slice(b);
            }
            many => {
                out.push(MULTI_NAME_PREFIX);
                // Checked in Path::new: at most 255 segments.
                out.push(u8::try_from(many.len()).unwrap_or(u8::MAX));
                for seg in many {
                    out.extend_from_slice(seg);
                }
            }
        }
        Ok(())
    }
}

/// Appends an integer in its shortest encoding (§20.2.3): ZeroOp, OneOp,
/// OnesOp (all bits set, for 64-bit integers of DSDT revision 2+), or a
/// Byte/Word/DWord/QWord prefix and little-endian value.
fn encode_integer(value: u64, out: &mut Vec<u8>) {
    match value {
        0 => out.push(ZERO_OP),
        1 => out.push(ONE_OP),
        u64::MAX => out.push(ONES_OP),
        v if v <= u64::from(u8::MAX) => {
            out.push(BYTE_PREFIX);
            out.push(v as u8);
        }
        v if v <= u64::from(u16::MAX) => {
            out.push(WORD_PREFIX);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        v if v <= u64::from(u32::MAX) => {
            out.push(DWORD_PREFIX);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        v => {
            out.push(QWORD_PREFIX);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

macro_rules! impl_aml_integer {
    ($($t:ty),*) => {$(
        impl Aml for $t {
            fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
                encode_integer(u64::from(*self), out);
                Ok(())
            }
        }
    )*};
}
impl_aml_integer!(u8, u16, u32, u64);

/// A string literal: StringPrefix, ASCII characters, NUL (§20.2.3).
impl Aml for &str {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        if !self.bytes().all(|c| (0x01..=0x7F).contains(&c)) {
            return Err(AmlError::InvalidString(self.to_string()));
        }
        out.push(STRING_PREFIX);
        out.extend_from_slice(self.as_bytes());
        out.push(0);
        Ok(())
    }
}

impl Aml for String {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        self.as_str().to_aml_bytes(out)
    }
}

/// `Name(path, value)`: DefName := NameOp NameString DataRefObject (§20.2.5.1).
pub struct Name {
    path: Path,
    value: Box<dyn Aml>,
}

impl Name {
    /// Declares `path` with the given value (integer, string, Package,
    /// Buffer, ResourceTemplate, EisaId, ...).
    pub fn new(path: &str, value: impl Aml + 'static) -> Result<Self, AmlError> {
        Ok(Self { path: Path::new(path)?, value: Box::new(value) })
    }
}

impl Aml for Name {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(NAME_OP);
        self.path.to_aml_bytes(out)?;
        self.value.to_aml_bytes(out)
    }
}

/// `Package(){...}`: PackageOp PkgLength NumElements PackageElementList
/// (§20.2.5.4). Elements are data objects or names.
pub struct Package {
    elements: AmlList,
}

impl Package {
    /// A package holding `elements` in order (at most 255).
    pub fn new(elements: AmlList) -> Self {
        Self { elements }
    }
}

impl Aml for Package {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let count =
            u8::try_from(self.elements.len()).map_err(|_| AmlError::TooManyPackageElements(self.elements.len()))?;
        let mut body = vec![count];
        self.elements.to_aml_bytes(&mut body)?;
        write_pkg(out, &[PACKAGE_OP], &body)
    }
}

/// `Scope(path){...}`: ScopeOp PkgLength NameString TermList (§20.2.5.1).
pub struct Scope {
    path: Path,
    children: AmlList,
}

impl Scope {
    /// Opens the existing namespace node `path` (e.g. `"\\_SB"`) and adds
    /// `children` to it.
    pub fn new(path: &str, children: AmlList) -> Result<Self, AmlError> {
        Ok(Self { path: Path::new(path)?, children })
    }
}

impl Aml for Scope {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut body = self.path.to_aml_vec()?;
        self.children.to_aml_bytes(&mut body)?;
        write_pkg(out, &[SCOPE_OP], &body)
    }
}

/// `Device(name){...}`: ExtOpPrefix DeviceOp PkgLength NameString TermList
/// (§20.2.5.2).
pub struct Device {
    path: Path,
    children: AmlList,
}

impl Device {
    /// Declares device `name` holding `children` (usually `Name`s such as
    /// `_HID`, `_UID`, `_CRS`, and `Method`s).
    pub fn new(name: &str, children: AmlList) -> Result<Self, AmlError> {
        Ok(Self { path: Path::new(name)?, children })
    }
}

impl Aml for Device {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut body = self.path.to_aml_vec()?;
        self.children.to_aml_bytes(&mut body)?;
        write_pkg(out, &[EXT_OP_PREFIX, DEVICE_OP], &body)
    }
}

/// `Method(name, args, serialized){...}`: MethodOp PkgLength NameString
/// MethodFlags TermList (§20.2.5.2).
pub struct Method {
    path: Path,
    flags: u8,
    body: AmlList,
}

impl Method {
    /// Declares control method `name` taking `args` arguments (0-7),
    /// `NotSerialized` or `Serialized`, sync level 0, with statements `body`.
    pub fn new(name: &str, args: u8, serialized: bool, body: AmlList) -> Result<Self, AmlError> {
        if args > 7 {
            return Err(AmlError::TooManyMethodArgs(args));
        }
        // MethodFlags: bits 0-2 ArgCount, bit 3 SerializeFlag, bits 4-7 SyncLevel.
        let flags = args | (u8::from(serialized) << 3);
        Ok(Self { path: Path::new(name)?, flags, body })
    }
}

impl Aml for Method {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut body = self.path.to_aml_vec()?;
        body.push(self.flags);
        self.body.to_aml_bytes(&mut body)?;
        write_pkg(out, &[METHOD_OP], &body)
    }
}

/// `Return(value)`: ReturnOp ArgObject (§20.2.5.3).
pub struct Return {
    value: Box<dyn Aml>,
}

impl Return {
    /// Returns `value` (a constant or a name) from the enclosing method.
    pub fn new(value: impl Aml + 'static) -> Self {
        Self { value: Box::new(value) }
    }
}

impl Aml for Return {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(RETURN_OP);
        self.value.to_aml_bytes(out)
    }
}

/// A compressed EISA ID as ASL's `EISAID("PNP0501")` produces (§19.6.35):
/// three letters of 5 bits each (`'A'` = 1) and four hex digits, stored
/// big-endian in a 32-bit integer, so `"PNP0501"` is `0x0105D041`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EisaId(u32);

impl EisaId {
    /// Compresses a 7-character ID such as `"PNP0303"`.
    pub fn new(id: &str) -> Result<Self, AmlError> {
        let invalid = || AmlError::InvalidEisaId(id.to_string());
        let b = id.as_bytes();
        let (letters, digits) = match b {
            [l0, l1, l2, d @ ..] if d.len() == 4 => ([*l0, *l1, *l2], d),
            _ => return Err(invalid()),
        };
        let mut value: u32 = 0;
        for l in letters {
            if !l.is_ascii_uppercase() {
                return Err(invalid());
            }
            value = (value << 5) | u32::from(l - b'@');
        }
        for &d in digits {
            let nibble = char::from(d).to_digit(16).ok_or_else(invalid)?;
            value = (value << 4) | nibble;
        }
        // 15 letter bits + 16 digit bits, big-endian with bit 31 zero.
        Ok(Self(value.swap_bytes()))
    }

    /// The 32-bit integer value, as the guest reads `_HID`.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl Aml for EisaId {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        // Always a DWord, as iasl emits for EISAID(), so the disassembler
        // recognises it and prints it back as EisaId.
        out.push(DWORD_PREFIX);
        out.extend_from_slice(&self.0.to_le_bytes());
        Ok(())
    }
}

/// `Buffer(){bytes}`: BufferOp PkgLength BufferSize ByteList (§20.2.5.4).
pub struct Buffer {
    data: Vec<u8>,
}

impl Buffer {
    /// A buffer initialised with `data`, its size being `data.len()`.
    pub fn new(data: Vec<u8>) -> Self {
        Self { data }
    }
}

impl Aml for Buffer {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut body = Vec::new();
        let len = u64::try_from(self.data.len()).map_err(|_| AmlError::PkgLengthTooLarge(self.data.len()))?;
        encode_integer(len, &mut body);
        body.extend_from_slice(&self.data);
        write_pkg(out, &[BUFFER_OP], &body)
    }
}

/// Width of an address space descriptor (§6.4.3.5.1-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressWidth {
    /// 16-bit fields (`WordIO`, `WordBusNumber`), descriptor type 0x88.
    Word,
    /// 32-bit fields (`DWordMemory`), descriptor type 0x87.
    DWord,
    /// 64-bit fields (`QWordMemory`), descriptor type 0x8A.
    QWord,
}

/// What an address space descriptor describes (§6.4.3.5, table 6.47-6.49).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpaceKind {
    /// Memory range; `cacheable` selects Cacheable over NonCacheable.
    Memory {
        /// `_MEM`: cacheable (1) rather than non-cacheable (0).
        cacheable: bool,
        /// `_RW`: read-write rather than read-only.
        read_write: bool,
    },
    /// I/O port range, decoding the entire range (`_RNG` = 3).
    Io,
    /// PCI bus number range.
    BusNumber,
}

/// One resource descriptor inside a [`ResourceTemplate`] (§6.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// `IO(Decode16, min, max, align, len)`: small I/O port descriptor
    /// (§6.4.2.5).
    Io {
        /// Lowest base address.
        min: u16,
        /// Highest base address.
        max: u16,
        /// Base alignment.
        align: u8,
        /// Number of ports.
        len: u8,
    },
    /// `IRQNoFlags(){...}`: 2-byte IRQ descriptor, meaning edge-triggered,
    /// active-high, exclusive (§6.4.2.1). Bit n of `mask` is IRQ n.
    IrqNoFlags {
        /// Bit mask of IRQs 0-15.
        mask: u16,
    },
    /// `Memory32Fixed(ReadWrite|ReadOnly, base, len)`: large descriptor
    /// (§6.4.3.4).
    Memory32Fixed {
        /// Writable as well as readable.
        read_write: bool,
        /// Base address.
        base: u32,
        /// Length in bytes.
        len: u32,
    },
    /// `Interrupt(ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow, Exclusive|Shared) {gsi}`:
    /// the extended interrupt descriptor, for GSIs above 15 (§6.4.3.6).
    Interrupt {
        /// Edge-triggered (else level).
        edge: bool,
        /// Active-low (else active-high).
        active_low: bool,
        /// Shared with other devices.
        shared: bool,
        /// The global system interrupt.
        gsi: u32,
    },
    /// `WordBusNumber`/`WordIO`/`DWordMemory`/`QWordMemory`
    /// (ResourceProducer, MinFixed, MaxFixed, PosDecode): a window a bridge
    /// forwards to its children, as a PCI host bridge `_CRS` lists
    /// (§6.4.3.5).
    AddressSpace {
        /// Field width of the descriptor.
        width: AddressWidth,
        /// Memory, I/O or bus number range.
        kind: AddressSpaceKind,
        /// First address.
        min: u64,
        /// Last address (inclusive).
        max: u64,
    },
}

impl Resource {
    /// `IO(Decode16, base, base, align, len)` for a fixed port range.
    pub fn io(base: u16, align: u8, len: u8) -> Self {
        Resource::Io { min: base, max: base, align, len }
    }

    /// `IRQNoFlags(){irq}` for a single ISA IRQ 0-15.
    pub fn irq_no_flags(irq: u8) -> Result<Self, AmlError> {
        if irq > 15 {
            return Err(AmlError::InvalidIrq(irq));
        }
        Ok(Resource::IrqNoFlags { mask: 1 << irq })
    }

    /// `Memory32Fixed(ReadWrite, base, len)`.
    pub fn memory32_fixed(base: u32, len: u32) -> Self {
        Resource::Memory32Fixed { read_write: true, base, len }
    }

    /// Appends this descriptor's bytes.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        match *self {
            Resource::Io { min, max, align, len } => {
                if min > max {
                    let (min, max) = (u64::from(min), u64::from(max));
                    return Err(AmlError::InvalidRange { min, max });
                }
                // Small item type 0x08, length 7; information bit 0 = 16-bit decode.
                out.extend_from_slice(&[0x47, 0x01]);
                out.extend_from_slice(&min.to_le_bytes());
                out.extend_from_slice(&max.to_le_bytes());
                out.extend_from_slice(&[align, len]);
            }
            Resource::IrqNoFlags { mask } => {
                // Small item type 0x04, length 2 (no information byte).
                out.push(0x22);
                out.extend_from_slice(&mask.to_le_bytes());
            }
            Resource::Memory32Fixed { read_write, base, len } => {
                // Large item 0x86, length 9; information bit 0 = writeable.
                out.extend_from_slice(&[0x86, 0x09, 0x00, u8::from(read_write)]);
                out.extend_from_slice(&base.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Resource::Interrupt { edge, active_low, shared, gsi } => {
                // Large item 0x89, length 6: flags (bit 0 consumer, 1 edge, 2 active-low,
                // 3 shared), one interrupt in the table, the 32-bit interrupt number.
                let flags = 1 | u8::from(edge) << 1 | u8::from(active_low) << 2 | u8::from(shared) << 3;
                out.extend_from_slice(&[0x89, 0x06, 0x00, flags, 0x01]);
                out.extend_from_slice(&gsi.to_le_bytes());
            }
            Resource::AddressSpace { width, kind, min, max } => {
                encode_address_space(width, kind, min, max, out)?;
            }
        }
        Ok(())
    }
}

/// Appends a Word/DWord/QWord address space descriptor (§6.4.3.5.1-3):
/// tag, length, resource type, general flags, type-specific flags, then
/// granularity, min, max, translation offset and length in the chosen width.
fn encode_address_space(
    width: AddressWidth,
    kind: AddressSpaceKind,
    min: u64,
    max: u64,
    out: &mut Vec<u8>,
) -> Result<(), AmlError> {
    if min > max {
        return Err(AmlError::InvalidRange { min, max });
    }
    let len = max.saturating_sub(min).checked_add(1).ok_or(AmlError::AddressTooWide { value: max, width })?;
    let (tag, field_size, limit): (u8, usize, u64) = match width {
        AddressWidth::Word => (0x88, 2, u64::from(u16::MAX)),
        AddressWidth::DWord => (0x87, 4, u64::from(u32::MAX)),
        AddressWidth::QWord => (0x8A, 8, u64::MAX),
    };
    // The length field may need one more bit than max (e.g. 0-0xFFFF is
    // 0x10000 long), so check it too.
    for value in [max, len] {
        if value > limit {
            return Err(AmlError::AddressTooWide { value, width });
        }
    }
    let (resource_type, type_flags) = match kind {
        // _MEM in bits 1-2 (1 = cacheable), _RW in bit 0.
        AddressSpaceKind::Memory { cacheable, read_write } => (0u8, (u8::from(cacheable) << 1) | u8::from(read_write)),
        // _RNG = 3: both ISA and non-ISA ranges.
        AddressSpaceKind::Io => (1, 0x03),
        AddressSpaceKind::BusNumber => (2, 0x00),
    };
    // General flags: _MAF (bit 3) and _MIF (bit 2) fixed, positive decode,
    // bit 0 clear = ResourceProducer (a bridge window).
    let general_flags = 0x0C;
    // 3 flag bytes + 5 fields; at most 3 + 40 = 43, fits a u16.
    let body_len = 3 + 5 * field_size;
    out.push(tag);
    out.extend_from_slice(&(body_len as u16).to_le_bytes());
    out.extend_from_slice(&[resource_type, general_flags, type_flags]);
    for field in [0, min, max, 0, len] {
        // granularity 0, min, max, translation 0, length
        out.extend(field.to_le_bytes().iter().take(field_size));
    }
    Ok(())
}

/// `ResourceTemplate(){...}` (§19.6.116): a Buffer holding resource
/// descriptors followed by the End Tag (§6.4.2.9), as `_CRS` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTemplate {
    resources: Vec<Resource>,
}

impl ResourceTemplate {
    /// A template listing `resources` in order.
    pub fn new(resources: Vec<Resource>) -> Self {
        Self { resources }
    }
}

impl Aml for ResourceTemplate {
    fn to_aml_bytes(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut data = Vec::new();
        for r in &self.resources {
            r.encode(&mut data)?;
        }
        // End Tag: small item type 0x0F, length 1; a checksum byte of 0
        // means "treat as correct" (§6.4.2.9), which is what iasl emits.
        data.extend_from_slice(&[0x79, 0x00]);
        Buffer::new(data).to_aml_bytes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(value: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_pkg_length(value, &mut v).unwrap();
        v
    }

    fn pkg_for_body(len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_pkg_length_for_body(len, &mut v).unwrap();
        v
    }

    fn aml(obj: &dyn Aml) -> Vec<u8> {
        obj.to_aml_vec().unwrap()
    }

    #[test]
    fn pkg_length_boundaries() {
        assert_eq!(pkg(0), [0x00]);
        assert_eq!(pkg(63), [0x3F]);
        assert_eq!(pkg(64), [0x40, 0x04]);
        assert_eq!(pkg(4095), [0x4F, 0xFF]);
        assert_eq!(pkg(4096), [0x80, 0x00, 0x01]);
        assert_eq!(pkg(0xF_FFFF), [0x8F, 0xFF, 0xFF]);
        assert_eq!(pkg(0x10_0000), [0xC0, 0x00, 0x00, 0x01]);
        assert_eq!(pkg(MAX_PKG_LENGTH), [0xCF, 0xFF, 0xFF, 0xFF]);
        let mut v = Vec::new();
        assert_eq!(encode_pkg_length(MAX_PKG_LENGTH + 1, &mut v), Err(AmlError::PkgLengthTooLarge(MAX_PKG_LENGTH + 1)));
    }

    #[test]
    fn pkg_length_counts_itself() {
        // The encoded value is body + PkgLength bytes, at every switch point.
        for body in [0, 61, 62, 63, 64, 4092, 4093, 4094, 4095, 0xF_FFFC, 0xF_FFFD] {
            let enc = pkg_for_body(body);
            let total = body + enc.len();
            assert_eq!(enc, pkg(total), "body {body}");
        }
        assert_eq!(pkg_for_body(62), [0x3F]);
        assert_eq!(pkg_for_body(63), [0x41, 0x04]); // 65 = 0x41
        let mut v = Vec::new();
        assert!(encode_pkg_length_for_body(MAX_PKG_LENGTH, &mut v).is_err());
    }

    #[test]
    fn name_strings() {
        assert_eq!(aml(&Path::new("_HID").unwrap()), b"_HID");
        assert_eq!(aml(&Path::new("_SB").unwrap()), b"_SB_");
        assert_eq!(aml(&Path::new("\\").unwrap()), [b'\\', 0x00]);
        assert_eq!(aml(&Path::new("\\_S5_").unwrap()), b"\\_S5_");
        assert_eq!(aml(&Path::new("\\_SB.COM1").unwrap()), b"\\\x2E_SB_COM1");
        assert_eq!(aml(&Path::new("^^PCI0").unwrap()), b"^^PCI0");
        assert_eq!(aml(&Path::new("\\_SB.PCI0.ISA").unwrap()), b"\\\x2F\x03_SB_PCI0ISA_");
    }

    #[test]
    fn bad_names() {
        for bad in ["", "_HIDX", "1ABC", "a", "\\_SB..X", "\\^X", "_S-5", "A.", "É"] {
            assert_eq!(Path::new(bad), Err(AmlError::InvalidName(bad.into())), "{bad:?}");
        }
        let long = vec!["A"; 256].join(".");
        assert!(matches!(Path::new(&long), Err(AmlError::TooManySegments(_))));
    }

    #[test]
    fn integers_use_shortest_encoding() {
        assert_eq!(aml(&0u8), [0x00]);
        assert_eq!(aml(&1u8), [0x01]);
        assert_eq!(aml(&2u8), [0x0A, 0x02]);
        assert_eq!(aml(&0xFFu32), [0x0A, 0xFF]);
        assert_eq!(aml(&0x100u32), [0x0B, 0x00, 0x01]);
        assert_eq!(aml(&0x3F8u16), [0x0B, 0xF8, 0x03]);
        assert_eq!(aml(&0x1_0000u32), [0x0C, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(aml(&0x1_0000_0000u64), [0x0E, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(aml(&u64::MAX), [0xFF]);
    }

    #[test]
    fn strings() {
        assert_eq!(aml(&"COM1"), b"\x0DCOM1\x00");
        assert_eq!(aml(&""), [0x0D, 0x00]);
        assert!(matches!("a\0b".to_aml_vec(), Err(AmlError::InvalidString(_))));
        assert!(matches!("é".to_aml_vec(), Err(AmlError::InvalidString(_))));
    }

    #[test]
    fn eisa_id() {
        assert_eq!(EisaId::new("PNP0501").unwrap().value(), 0x0105_D041);
        assert_eq!(EisaId::new("PNP0303").unwrap().value(), 0x0303_D041);
        assert_eq!(EisaId::new("PNP0A08").unwrap().value(), 0x080A_D041);
        assert_eq!(aml(&EisaId::new("PNP0501").unwrap()), [0x0C, 0x41, 0xD0, 0x05, 0x01]);
        for bad in ["PNP050", "PNP05011", "pnp0501", "PNP05G1", "P1P0501"] {
            assert_eq!(EisaId::new(bad), Err(AmlError::InvalidEisaId(bad.into())));
        }
    }

    #[test]
    fn name_with_package() {
        // Name(\_S5_, Package(){5, 0}) as iasl compiles it.
        let n = Name::new("\\_S5_", Package::new(vec![Box::new(5u8), Box::new(0u8)])).unwrap();
        assert_eq!(aml(&n), [0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0A, 0x05, 0x00]);
    }

    #[test]
    fn package_element_limit() {
        let many: AmlList = (0..256).map(|_| Box::new(0u8) as Box<dyn Aml>).collect();
        assert_eq!(Package::new(many).to_aml_vec(), Err(AmlError::TooManyPackageElements(256)));
        let max: AmlList = (0..255).map(|_| Box::new(0u8) as Box<dyn Aml>).collect();
        let bytes = aml(&Package::new(max));
        // 255 elements + count byte = 256-byte body, 2-byte PkgLength.
        assert_eq!(&bytes[..4], &[0x12, 0x42, 0x10, 0xFF]);
    }

    #[test]
    fn scope_device_method() {
        let m = Method::new("_STA", 0, false, vec![Box::new(Return::new(0x0Fu8))]).unwrap();
        assert_eq!(aml(&m), [0x14, 0x09, b'_', b'S', b'T', b'A', 0x00, 0xA4, 0x0A, 0x0F]);
        let d = Device::new("COM1", vec![Box::new(Name::new("_UID", 1u8).unwrap())]).unwrap();
        assert_eq!(aml(&d), [0x5B, 0x82, 0x0B, b'C', b'O', b'M', b'1', 0x08, b'_', b'U', b'I', b'D', 0x01]);
        let s = Scope::new("\\_SB", vec![]).unwrap();
        assert_eq!(aml(&s), [0x10, 0x06, b'\\', b'_', b'S', b'B', b'_']);
        assert_eq!(Method::new("FOO", 8, false, vec![]).err(), Some(AmlError::TooManyMethodArgs(8)));
        let ser = Method::new("FOO", 2, true, vec![]).unwrap();
        assert_eq!(aml(&ser)[6], 0x0A);
    }

    #[test]
    fn resource_template_com1() {
        // ResourceTemplate(){ IO(Decode16, 0x3F8, 0x3F8, 0x00, 0x08) IRQNoFlags(){4} }
        let rt = ResourceTemplate::new(vec![Resource::io(0x3F8, 0, 8), Resource::irq_no_flags(4).unwrap()]);
        assert_eq!(
            aml(&rt),
            [
                0x11, 0x10, 0x0A, 0x0D, // Buffer, PkgLength 16, size 13
                0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08, // IO
                0x22, 0x10, 0x00, // IRQNoFlags 4
                0x79, 0x00, // End tag
            ]
        );
        assert_eq!(Resource::irq_no_flags(16), Err(AmlError::InvalidIrq(16)));
        let bad = ResourceTemplate::new(vec![Resource::Io { min: 2, max: 1, align: 1, len: 1 }]);
        assert_eq!(bad.to_aml_vec(), Err(AmlError::InvalidRange { min: 2, max: 1 }));
    }

    #[test]
    fn memory32_fixed_and_address_spaces() {
        let mut v = Vec::new();
        Resource::memory32_fixed(0xFEC0_0000, 0x1000).encode(&mut v).unwrap();
        assert_eq!(v, [0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0xC0, 0xFE, 0x00, 0x10, 0x00, 0x00]);

        let bus =
            Resource::AddressSpace { width: AddressWidth::Word, kind: AddressSpaceKind::BusNumber, min: 0, max: 0xFF };
        let mut v = Vec::new();
        bus.encode(&mut v).unwrap();
        assert_eq!(v, [0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0x00, 0x01]);
        for (width, size) in [(AddressWidth::DWord, 26), (AddressWidth::QWord, 46)] {
            let mem = Resource::AddressSpace {
                width,
                kind: AddressSpaceKind::Memory { cacheable: false, read_write: true },
                min: 0xC000_0000,
                max: 0xFEBF_FFFF,
            };
            let mut v = Vec::new();
            mem.encode(&mut v).unwrap();
            assert_eq!(v.len(), size);
        }
        let too_wide =
            Resource::AddressSpace { width: AddressWidth::Word, kind: AddressSpaceKind::Io, min: 0, max: 0xFFFF };
        assert_eq!(
            too_wide.encode(&mut Vec::new()),
            Err(AmlError::AddressTooWide { value: 0x1_0000, width: AddressWidth::Word })
        );
    }

    #[test]
    fn buffer() {
        assert_eq!(aml(&Buffer::new(vec![1, 2, 3])), [0x11, 0x06, 0x0A, 0x03, 1, 2, 3]);
        assert_eq!(aml(&Buffer::new(vec![])), [0x11, 0x02, 0x00]);
    }
}

//! What `show -json` of a saved plan says, in short (the resource counts, the first resources
//! it changes, a digest of the changes), read as the JSON streams past.
//!
//! A plan of a big unit is hundreds of megabytes, and a pull request's plan can print any
//! bytes at all (a Terragrunt hook writes to the same stdout). So nothing held here grows with
//! the plan, nor with any one part of it:
//! - each resource is read, counted, folded into the digest and dropped;
//! - the values of a resource that changes are hashed as their bytes pass, never parsed into a
//!   tree; those of a resource the plan leaves alone (`no-op`, most of a big plan) are skipped;
//! - only the first [`LISTED`] addresses are kept, each cut to [`KEPT_BYTES`], and a list of
//!   actions is counted as it is read;
//! - what the parser must hold whole (a key, an address, an action) may not be longer than
//!   [`HELD_STRING_BYTES`], and the plan may not nest deeper than [`DEEPEST`] levels (even a
//!   skipped value costs the parser a byte for each level it is in).
//!
//! Those two limits are checked by the reader the parser reads through ([`Guarded`]), as each
//! byte is taken: a plan past them is refused after a bounded read, not after it has been held.

use std::cell::{Cell, RefCell};
use std::collections::BinaryHeap;
use std::fmt;
use std::io::{self, Read};

use proto_types::untrusted_text::{self, head};
use proto_types::{DriftFindings, ResourceCounts};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

/// How many changed resources a summary names: as many as a drift finding lists.
pub const LISTED: usize = DriftFindings::MAX_RESOURCES;

/// The longest address, or list of actions, a summary keeps (the digest reads them whole).
pub const KEPT_BYTES: usize = 1024;

/// The longest string the parser may hold whole: a key, an address, an action. Terraform's
/// are a few hundred bytes at most; values, which can be long, are never held.
pub const HELD_STRING_BYTES: u64 = 1 << 20;

/// The deepest the plan may nest. Terraform's plans of nested modules and blocks stay well
/// under 100 levels.
pub const DEEPEST: u32 = 1024;

/// How much [`Guarded`] reads from the plan at a time.
const CHUNK: usize = 64 * 1024;

/// `text` cut to [`KEPT_BYTES`] at a character boundary, marked when cut.
pub(crate) fn kept(text: &str) -> String {
    if text.len() <= KEPT_BYTES {
        return text.to_owned();
    }
    format!("{}…", head(text, KEPT_BYTES))
}

/// An error's `text` cut to about [`KEPT_BYTES`], marked when cut: its start and its end, where
/// serde_json says at which line and column of the plan it stopped (after quoting, whole, a
/// value of the wrong type).
pub(crate) fn kept_error(text: &str) -> String {
    if text.len() <= KEPT_BYTES {
        return text.to_owned();
    }
    let end = KEPT_BYTES / 4;
    format!(
        "{}…{}",
        head(text, KEPT_BYTES - end),
        untrusted_text::tail(text, end)
    )
}

/// What `show -json` of a saved plan says, in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSummary {
    pub counts: ResourceCounts,
    /// `address (actions)` of the first [`LISTED`] resources the plan changes, in address
    /// order.
    pub listed: Vec<String>,
    /// How many resources the plan changes, listed or not.
    pub changed: usize,
    /// SHA-256 over what the plan changes (address, actions, planned values), whatever order
    /// the resources come in: two plans that would do the same have the same digest.
    pub digest: String,
}

/// Reads a summary from `show -json` of a saved plan. A replace (`["delete","create"]` or
/// `["create","delete"]`) counts as one add and one destroy, as Terraform's own summary does.
pub fn plan_summary_from(json: impl Read) -> Result<PlanSummary, serde_json::Error> {
    let guard = Guard::default();
    let mut summary = Summarizer::default();
    let mut reader = serde_json::Deserializer::from_reader(Guarded::new(json, &guard));
    PlanSeed {
        summary: &mut summary,
        guard: &guard,
    }
    .deserialize(&mut reader)?;
    reader.end()?;
    Ok(summary.finish())
}

/// The running summary: what is kept of the resources read so far.
#[derive(Default)]
struct Summarizer {
    counts: ResourceCounts,
    changed: usize,
    /// The [`LISTED`] smallest `(address, actions)` seen, largest on top.
    first: BinaryHeap<(String, String)>,
    /// The sum, modulo 2^256, of each change's SHA-256 (as four little-endian words): the
    /// same set of changes gives the same sum in any order, and nothing is held per change.
    sum: [u64; 4],
}

impl Summarizer {
    fn add(&mut self, change: ResourceChange) {
        let actions = change.actions;
        if !actions.changes() {
            return;
        }
        self.counts.add = self.counts.add.saturating_add(actions.counts.add);
        self.counts.change = self.counts.change.saturating_add(actions.counts.change);
        self.counts.destroy = self.counts.destroy.saturating_add(actions.counts.destroy);
        self.changed += 1;
        // Each part by its own hash, so that neither the order of the keys of an entry nor
        // where one part ends and the next begins can make two changes hash alike.
        let mut hash = Sha256::new();
        hash.update(Sha256::digest(change.address.as_bytes()));
        hash.update(actions.hash.finalize());
        for part in [change.after, change.after_unknown] {
            match part {
                Some(value) => {
                    hash.update([1_u8]);
                    hash.update(value);
                }
                None => hash.update([0_u8]),
            }
        }
        let hash = hash.finalize();
        let mut carry = false;
        for (word, bytes) in self.sum.iter_mut().zip(hash.chunks_exact(8)) {
            let bytes: [u8; 8] = bytes.try_into().unwrap_or_default();
            let (once, first) = word.overflowing_add(u64::from_le_bytes(bytes));
            let (twice, second) = once.overflowing_add(u64::from(carry));
            *word = twice;
            carry = first || second;
        }
        self.first
            .push((kept(&change.address), kept(&actions.shown)));
        if self.first.len() > LISTED {
            self.first.pop();
        }
    }

    fn finish(self) -> PlanSummary {
        let mut digest = Sha256::new();
        digest.update(b"pipelines plan changes 3\n");
        digest.update((self.changed as u64).to_le_bytes());
        for word in self.sum {
            digest.update(word.to_le_bytes());
        }
        PlanSummary {
            counts: self.counts,
            listed: self
                .first
                .into_sorted_vec()
                .into_iter()
                .map(|(address, actions)| format!("{address} ({actions})"))
                .collect(),
            changed: self.changed,
            digest: digest
                .finalize()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        }
    }
}

/// One entry of `resource_changes`, as much of it as a summary needs.
struct ResourceChange {
    address: String,
    actions: Actions,
    /// The SHA-256 of the planned values as written; `None` when absent, or when the plan
    /// leaves the resource alone (then they are not read).
    after: Option<[u8; 32]>,
    after_unknown: Option<[u8; 32]>,
}

/// A resource's list of actions, read one at a time.
#[derive(Default)]
struct Actions {
    counts: ResourceCounts,
    /// How many actions were read.
    read: u64,
    /// The actions joined by `, `, as far as [`kept`] shows them.
    shown: String,
    /// Over each action, after its length.
    hash: Sha256,
}

impl Actions {
    /// Whether the actions change the resource (a read or a no-op does not).
    fn changes(&self) -> bool {
        self.counts != ResourceCounts::default()
    }

    fn add(&mut self, action: &str) {
        let counts = &mut self.counts;
        match action {
            "create" => counts.add = counts.add.saturating_add(1),
            "update" => counts.change = counts.change.saturating_add(1),
            "delete" => counts.destroy = counts.destroy.saturating_add(1),
            _ => {}
        }
        self.hash.update((action.len() as u64).to_le_bytes());
        self.hash.update(action.as_bytes());
        // Past KEPT_BYTES the text is cut anyway, so once it is longer nothing more is added,
        // and of an action no more than reaches past it (a character is at most 4 bytes).
        if self.shown.len() <= KEPT_BYTES {
            if self.read > 0 {
                self.shown.push_str(", ");
            }
            self.shown.push_str(head(action, KEPT_BYTES + 4));
        }
        self.read += 1;
    }
}

/// What the parser is doing with the bytes it takes now: tells [`Guarded`] what to check,
/// and where the bytes of a hashed value go.
#[derive(Default)]
struct Guard {
    mode: Cell<Mode>,
    hashed: RefCell<Sha256>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Mode {
    /// Parsed into something held (a key, an address, an action): a string is limited to
    /// [`HELD_STRING_BYTES`].
    #[default]
    Held,
    /// Skipped unparsed: nothing of it is held, however long.
    Skipped,
    /// Skipped unparsed, its bytes hashed.
    Hashed,
}

impl Guard {
    /// Skips the next value of `map` without holding any of it.
    fn skip<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<(), A::Error> {
        debug_assert!(self.mode.get() == Mode::Held);
        self.mode.set(Mode::Skipped);
        let skipped = map.next_value::<IgnoredAny>();
        self.mode.set(Mode::Held);
        skipped.map(|IgnoredAny| ())
    }

    /// Skips the next value of `map` and gives the SHA-256 of its bytes as written, white
    /// space between tokens left out ([`Scan::take`] says which bytes are the value's).
    /// Terraform writes the keys of an object sorted, so the same values give the same bytes.
    fn hash<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<[u8; 32], A::Error> {
        debug_assert!(self.mode.get() == Mode::Held);
        self.hashed.replace(Sha256::new());
        self.mode.set(Mode::Hashed);
        let skipped = map.next_value::<IgnoredAny>();
        self.mode.set(Mode::Held);
        skipped?;
        Ok(self.hashed.take().finalize().into())
    }
}

/// The plan as the parser reads it, each byte checked (and hashed, if the parser is hashing)
/// as the parser takes it. (`serde_json` peeks at most one byte ahead, at the delimiter after
/// a number, which is never a string's or a value's first byte.)
struct Guarded<'a, R> {
    inner: R,
    guard: &'a Guard,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    scan: Scan,
}

impl<'a, R: Read> Guarded<'a, R> {
    fn new(inner: R, guard: &'a Guard) -> Self {
        Guarded {
            inner,
            guard,
            buffer: vec![0; CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            scan: Scan::default(),
        }
    }
}

impl<R: Read> Read for Guarded<'_, R> {
    /// Hands over one byte per call, whatever `out`'s length: the checks of a byte go by what
    /// the parser is doing when it takes it, not when it could have taken it.
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(slot) = out.first_mut() else {
            return Ok(0);
        };
        if self.start == self.end {
            self.end = self.inner.read(&mut self.buffer)?;
            self.start = 0;
            if self.end == 0 {
                return Ok(0);
            }
        }
        let byte = self.buffer[self.start];
        let mode = self.guard.mode.get();
        if mode == Mode::Hashed {
            let from = *self.scan.hashed_from.get_or_insert(self.scan.depth);
            if self.scan.take(byte, mode, from)? {
                self.guard.hashed.borrow_mut().update([byte]);
            }
        } else {
            self.scan.hashed_from = None;
            self.scan.take(byte, mode, u32::MAX)?;
        }
        *slot = byte;
        self.start += 1;
        Ok(1)
    }
}

/// Where the reader is in the JSON: enough to know how deep it is, how long the string being
/// read is, and which bytes belong to the value being hashed.
#[derive(Default)]
struct Scan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Bytes of the string being read, counted while it is held.
    string_bytes: u64,
    /// The depth the value being hashed starts at.
    hashed_from: Option<u32>,
}

impl Scan {
    /// Takes `byte` in `mode`; `Ok(true)` when it is part of a value that starts at depth
    /// `from`: not the `:` before it, the delimiter after it (which ends a number) or white
    /// space between tokens, so that where the value sits and how it is spaced do not count.
    #[inline]
    fn take(&mut self, byte: u8, mode: Mode, from: u32) -> io::Result<bool> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
            if mode == Mode::Held {
                self.string_bytes += 1;
                if self.string_bytes > HELD_STRING_BYTES {
                    return Err(refused(Refused::TooLong));
                }
            }
            return Ok(true);
        }
        let inside = self.depth > from;
        Ok(match byte {
            b'"' => {
                self.in_string = true;
                self.string_bytes = 0;
                true
            }
            b'[' | b'{' => {
                self.depth += 1;
                if self.depth > DEEPEST {
                    return Err(refused(Refused::TooDeep));
                }
                true
            }
            b']' | b'}' => {
                self.depth = self.depth.saturating_sub(1);
                inside
            }
            b',' | b':' => inside,
            b' ' | b'\t' | b'\n' | b'\r' => false,
            _ => true,
        })
    }
}

/// Why [`Guarded`] stopped the parser.
#[derive(Clone, Copy)]
enum Refused {
    TooLong,
    TooDeep,
}

// Out of the way of the per-byte path, which is the summary's cost.
#[cold]
#[inline(never)]
fn refused(why: Refused) -> io::Error {
    let reason = match why {
        Refused::TooLong => format!(
            "a key, address or action in the plan is longer than {} MiB",
            HELD_STRING_BYTES >> 20
        ),
        Refused::TooDeep => format!("the plan nests deeper than {DEEPEST} levels"),
    };
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// The plan document: every key but `resource_changes` is skipped as it is read.
struct PlanSeed<'a> {
    summary: &'a mut Summarizer,
    guard: &'a Guard,
}

impl<'de> DeserializeSeed<'de> for PlanSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PlanSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON plan")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "resource_changes" {
                if seen {
                    return Err(de::Error::duplicate_field("resource_changes"));
                }
                seen = true;
                map.next_value_seed(ChangesSeed {
                    summary: &mut *self.summary,
                    guard: self.guard,
                })?;
            } else {
                self.guard.skip(&mut map)?;
            }
        }
        Ok(())
    }
}

/// `resource_changes`: each entry is summed in as soon as it is read.
struct ChangesSeed<'a> {
    summary: &'a mut Summarizer,
    guard: &'a Guard,
}

impl<'de> DeserializeSeed<'de> for ChangesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChangesSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of resource changes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(change) = seq.next_element_seed(ResourceChangeSeed(self.guard))? {
            self.summary.add(change);
        }
        Ok(())
    }
}

/// One entry of `resource_changes`: `address` and `change`; the rest is skipped.
struct ResourceChangeSeed<'a>(&'a Guard);

impl<'de> DeserializeSeed<'de> for ResourceChangeSeed<'_> {
    type Value = ResourceChange;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<ResourceChange, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResourceChangeSeed<'_> {
    type Value = ResourceChange;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a resource change")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResourceChange, A::Error> {
        let mut address = None;
        let mut change = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "address" if address.is_none() => address = Some(map.next_value::<String>()?),
                "change" if change.is_none() => {
                    change = Some(map.next_value_seed(ChangeSeed(self.0))?);
                }
                "address" | "change" => {
                    return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                }
                _ => self.0.skip(&mut map)?,
            }
        }
        let Change {
            actions,
            after,
            after_unknown,
        } = change.ok_or_else(|| de::Error::missing_field("change"))?;
        Ok(ResourceChange {
            address: address.unwrap_or_default(),
            actions,
            after,
            after_unknown,
        })
    }
}

/// A resource's `change`: its `actions`, and the hashes of its planned values when the
/// actions change it. Terraform writes `actions` first, so a no-op's values are skipped
/// without being hashed; values that come before the actions are hashed and dropped if they
/// turn out not to matter.
struct ChangeSeed<'a>(&'a Guard);

struct Change {
    actions: Actions,
    after: Option<[u8; 32]>,
    after_unknown: Option<[u8; 32]>,
}

impl<'de> DeserializeSeed<'de> for ChangeSeed<'_> {
    type Value = Change;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Change, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChangeSeed<'_> {
    type Value = Change;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a change with its actions")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Change, A::Error> {
        let mut actions: Option<Actions> = None;
        let (mut after, mut after_unknown) = (None, None);
        let (mut seen_after, mut seen_unknown) = (false, false);
        while let Some(key) = map.next_key::<String>()? {
            let wanted = actions.as_ref().is_none_or(Actions::changes);
            let seen = match key.as_str() {
                "actions" => actions.is_some(),
                "after" => std::mem::replace(&mut seen_after, true),
                "after_unknown" => std::mem::replace(&mut seen_unknown, true),
                _ => false,
            };
            if seen {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            match key.as_str() {
                "actions" => actions = Some(map.next_value_seed(ActionsSeed)?),
                "after" if wanted => after = Some(self.0.hash(&mut map)?),
                "after_unknown" if wanted => after_unknown = Some(self.0.hash(&mut map)?),
                _ => self.0.skip(&mut map)?,
            }
        }
        let actions = actions.ok_or_else(|| de::Error::missing_field("actions"))?;
        if !actions.changes() {
            (after, after_unknown) = (None, None);
        }
        Ok(Change {
            actions,
            after,
            after_unknown,
        })
    }
}

/// A list of actions, counted and hashed one action at a time.
struct ActionsSeed;

impl<'de> DeserializeSeed<'de> for ActionsSeed {
    type Value = Actions;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Actions, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ActionsSeed {
    type Value = Actions;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of actions")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Actions, A::Error> {
        let mut actions = Actions::default();
        while let Some(action) = seq.next_element::<String>()? {
            actions.add(&action);
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(json: &[u8]) -> Result<ResourceCounts, serde_json::Error> {
        plan_summary_from(json).map(|summary| summary.counts)
    }

    #[test]
    fn resource_counts_come_from_plan_actions() {
        let json = br#"{"format_version":"1.2","resource_changes":[
            {"address":"a","change":{"actions":["create"]}},
            {"address":"b","change":{"actions":["update"]}},
            {"address":"c","change":{"actions":["delete","create"]}},
            {"address":"d","change":{"actions":["no-op"]}},
            {"address":"e","change":{"actions":["delete"]}}]}"#;
        assert_eq!(
            counts(json).unwrap(),
            ResourceCounts {
                add: 2,
                change: 1,
                destroy: 2
            }
        );
        assert_eq!(
            counts(br#"{"format_version":"1.2"}"#).unwrap(),
            ResourceCounts::default()
        );
        assert!(counts(b"not json").is_err());
        assert!(counts(br#"{"resource_changes":[{"address":"a"}]}"#).is_err());
        assert!(counts(br#"{"resource_changes":[]} trailing"#).is_err());
        // A key twice is refused, as a derived reader would, not read twice.
        for twice in [
            r#"{"resource_changes":[],"resource_changes":[]}"#,
            r#"{"resource_changes":[{"address":"a","address":"b","change":{"actions":[]}}]}"#,
            r#"{"resource_changes":[{"change":{"actions":["create"],"after":1,"after":2}}]}"#,
            r#"{"resource_changes":[{"change":{"actions":["no-op"],"actions":["create"]}}]}"#,
        ] {
            assert!(counts(twice.as_bytes()).is_err(), "{twice}");
        }
    }

    fn plan(resources: &[(&str, &str, &str)]) -> String {
        let entries: Vec<String> = resources
            .iter()
            .map(|(address, actions, value)| {
                format!(
                    r#"{{"address":"{address}","mode":"managed","change":{{"actions":{actions},"before":null,"after":{{"triggers":{{"v":"{value}"}}}},"after_unknown":{{"id":true}}}}}}"#
                )
            })
            .collect();
        format!(
            r#"{{"format_version":"1.2","planned_values":{{}},"resource_changes":[{}],"configuration":{{}}}}"#,
            entries.join(",")
        )
    }

    #[test]
    fn a_plan_summary_lists_what_changes_and_digests_it_stably() {
        let one = plan_summary_from(
            plan(&[
                ("null_resource.b", r#"["delete","create"]"#, "1"),
                ("null_resource.a", r#"["no-op"]"#, "1"),
            ])
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(one.listed, ["null_resource.b (delete, create)"]);
        assert_eq!(one.changed, 1);
        assert_eq!(one.digest.len(), 64);
        let again = |value: &str, untouched: &str| {
            plan_summary_from(
                plan(&[
                    ("null_resource.a", r#"["no-op"]"#, untouched),
                    ("null_resource.b", r#"["delete","create"]"#, value),
                ])
                .as_bytes(),
            )
            .unwrap()
            .digest
        };
        assert_eq!(
            one.digest,
            again("1", "2"),
            "the order of the resources and the values of untouched ones do not count"
        );
        assert_ne!(
            one.digest,
            again("2", "1"),
            "a different planned value is a different drift"
        );
        let empty = plan_summary_from(&br#"{"resource_changes":[]}"#[..]).unwrap();
        assert!(empty.listed.is_empty());
        assert_ne!(empty.digest, one.digest);
    }

    #[test]
    fn the_same_change_twice_is_not_the_same_as_none() {
        let create = ("null_resource.a", r#"["create"]"#, "1");
        let once = plan_summary_from(plan(&[create]).as_bytes()).unwrap();
        let twice = plan_summary_from(plan(&[create, create]).as_bytes()).unwrap();
        let none = plan_summary_from(plan(&[]).as_bytes()).unwrap();
        assert_eq!(twice.changed, 2);
        assert_ne!(once.digest, twice.digest);
        assert_ne!(twice.digest, none.digest);
    }

    #[test]
    fn only_the_first_resources_in_address_order_are_listed() {
        let addresses: Vec<String> = (0..LISTED + 25)
            .rev()
            .map(|n| format!("null_resource.r{n:03}"))
            .collect();
        let resources: Vec<(&str, &str, &str)> = addresses
            .iter()
            .map(|address| (address.as_str(), r#"["create"]"#, "v"))
            .collect();
        let summary = plan_summary_from(plan(&resources).as_bytes()).unwrap();
        assert_eq!(summary.changed, LISTED + 25);
        assert_eq!(summary.counts.add as usize, LISTED + 25);
        assert_eq!(summary.listed.len(), LISTED);
        assert_eq!(summary.listed[0], "null_resource.r000 (create)");
        assert_eq!(
            summary.listed[LISTED - 1],
            format!("null_resource.r{:03} (create)", LISTED - 1)
        );
        // What is listed is cut; what is digested is not.
        let long = "é".repeat(KEPT_BYTES);
        let longer = format!("{long}x");
        let listed = |address: &str| {
            plan_summary_from(plan(&[(address, r#"["create"]"#, "v")]).as_bytes()).unwrap()
        };
        let (one, two) = (listed(&long), listed(&longer));
        assert_eq!(one.listed, two.listed);
        assert_eq!(
            one.listed[0],
            format!("{}… (create)", "é".repeat(KEPT_BYTES / 2))
        );
        assert_ne!(one.digest, two.digest);
    }

    #[test]
    fn planned_values_are_hashed_as_written_not_parsed() {
        // A number beyond f64 cannot be parsed into a value: hashed as written, it is no
        // error, in a resource the plan leaves alone or in one it changes.
        let json = |n: &str| {
            format!(
                r#"{{"resource_changes":[
                {{"address":"a","change":{{"actions":["no-op"],"after":{{"n":1e999}}}}}},
                {{"address":"b","change":{{"actions":["update"],"after":{{"n":{n}}}}}}}]}}"#
            )
        };
        let big = plan_summary_from(json("1e999").as_bytes()).unwrap();
        assert_eq!(big.listed, ["b (update)"]);
        let bigger = plan_summary_from(json("1e9999").as_bytes()).unwrap();
        assert_ne!(big.digest, bigger.digest);
    }

    #[test]
    fn white_space_between_tokens_does_not_change_the_digest() {
        let compact = plan(&[("null_resource.a", r#"["create"]"#, "x y")]);
        let spaced = compact
            .replace(",\"", ",\n  \"")
            .replace(":{", ": {\t")
            .replace('}', " }\r\n");
        assert_ne!(compact, spaced);
        let digest = |json: &str| plan_summary_from(json.as_bytes()).unwrap().digest;
        assert_eq!(digest(&compact), digest(&spaced));
        // Inside a string, a space is part of the value.
        let other = plan(&[("null_resource.a", r#"["create"]"#, "x  y")]);
        assert_ne!(digest(&compact), digest(&other));
        // Nor does where a value sits: a number's end is taken with the delimiter after it.
        let number = |change: &str| {
            digest(&format!(
                r#"{{"resource_changes":[{{"address":"a","change":{change}}}]}}"#
            ))
        };
        let last = number(r#"{"actions":["update"],"after":1}"#);
        assert_eq!(
            number(r#"{"actions":["update"],"after":1,"before":2}"#),
            last
        );
        assert_eq!(
            number(r#"{"actions":["update"],"after":1 , "before":2}"#),
            last
        );
        assert_ne!(number(r#"{"actions":["update"],"after":12}"#), last);
    }

    #[test]
    fn the_digest_of_a_known_plan_stays_what_it_was() {
        // Drift is reported again when the digest of the same plan changes: a change to how
        // it is computed must be deliberate (and said in OPERATIONS.md's upgrade notes).
        let summary = plan_summary_from(
            plan(&[
                ("null_resource.a", r#"["create"]"#, "1"),
                ("null_resource.b", r#"["delete","create"]"#, "2"),
                ("null_resource.c", r#"["no-op"]"#, "3"),
            ])
            .as_bytes(),
        )
        .unwrap();
        // Worked out apart from this code (Python's hashlib), from what `Summarizer::add`
        // and `Scan::take` say is hashed.
        assert_eq!(
            summary.digest,
            "6b1a6fc1d163b529f98525dba864e8605dc571520eb2dbdde03151254a06bcfb"
        );
    }

    #[test]
    fn a_list_of_actions_is_counted_and_shown_cut_as_it_is_read() {
        let many = vec![r#""create""#; 1000].join(",");
        let summary =
            plan_summary_from(plan(&[("null_resource.a", &format!("[{many}]"), "v")]).as_bytes())
                .unwrap();
        assert_eq!(summary.counts.add, 1000);
        assert_eq!(summary.changed, 1);
        let joined = vec!["create"; 1000].join(", ");
        assert_eq!(
            summary.listed,
            [format!("null_resource.a ({})", kept(&joined))]
        );
        // An action longer than what is shown is cut as the whole list would be.
        let long = "é".repeat(KEPT_BYTES);
        let summary =
            plan_summary_from(plan(&[("a", &format!(r#"["create","{long}"]"#), "v")]).as_bytes())
                .unwrap();
        assert_eq!(
            summary.listed,
            [format!("a ({})", kept(&format!("create, {long}")))]
        );
        // An empty action is shown as one.
        let summary =
            plan_summary_from(plan(&[("a", r#"["","create"]"#, "v")]).as_bytes()).unwrap();
        assert_eq!(summary.listed, ["a (, create)"]);
    }

    #[test]
    fn an_error_quoting_a_long_value_is_cut_in_the_middle_and_keeps_where_it_stopped() {
        // Actions must be a list: serde_json quotes the string it found instead, whole.
        let long = "é".repeat(4 * KEPT_BYTES);
        let err = plan_summary_from(plan(&[("a", &format!(r#""{long}""#), "v")]).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.len() > 8 * KEPT_BYTES, "{err}");
        let kept = kept_error(&err);
        assert!(kept.len() <= KEPT_BYTES + "…".len(), "{}", kept.len());
        assert!(kept.starts_with("invalid type: string \"éé"), "{kept}");
        assert!(kept.contains("é…é"), "{kept}");
        let at = err.rsplit_once(" at line ").unwrap().1;
        assert!(
            kept.ends_with(&format!("\", expected a list of actions at line {at}")),
            "{kept}"
        );
        // Short ones are kept whole.
        assert_eq!(
            kept_error("expected value at line 1 column 1"),
            "expected value at line 1 column 1"
        );
    }

    /// `head`, then `fill` over and over, up to `limit` bytes in all, made as it is read.
    struct Endless {
        head: &'static [u8],
        fill: &'static [u8],
        limit: u64,
        given: u64,
    }

    impl Endless {
        fn new(head: &'static str, fill: &'static str) -> Endless {
            Endless {
                head: head.as_bytes(),
                fill: fill.as_bytes(),
                limit: 64 << 20,
                given: 0,
            }
        }
    }

    impl Read for Endless {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let mut written = 0;
            while written < out.len() && self.given < self.limit {
                let at = usize::try_from(self.given).unwrap();
                out[written] = match at.checked_sub(self.head.len()) {
                    None => self.head[at],
                    Some(past) => self.fill[past % self.fill.len()],
                };
                written += 1;
                self.given += 1;
            }
            Ok(written)
        }
    }

    /// What reading `endless` gives, and how many bytes it took.
    fn read_endless(mut endless: Endless) -> (String, u64) {
        let error = plan_summary_from(&mut endless).unwrap_err().to_string();
        (error, endless.given)
    }

    #[test]
    fn a_plan_nested_past_the_limit_is_refused_after_a_bounded_read() {
        for head in [
            r#"{"planned_values":"#,
            r#"{"resource_changes":[{"change":{"actions":["update"],"after":"#,
            r#"{"resource_changes":[{"address":"a","mode":"#,
        ] {
            let (error, given) = read_endless(Endless::new(head, "[{\"k\":"));
            let refused = format!("the plan nests deeper than {DEEPEST} levels at line 1 column");
            assert!(error.starts_with(&refused), "{head}: {error}");
            assert!(given <= 2 * CHUNK as u64, "{head}: read {given} bytes");
        }
        // Up to the limit, skipping is no error; one level more is.
        let deep = |levels: usize| {
            plan_summary_from(
                format!(
                    r#"{{"planned_values":{}{},"resource_changes":[]}}"#,
                    "[".repeat(levels - 1),
                    "]".repeat(levels - 1)
                )
                .as_bytes(),
            )
        };
        deep(DEEPEST as usize).unwrap();
        let error = deep(DEEPEST as usize + 1).unwrap_err().to_string();
        assert!(error.starts_with("the plan nests deeper"), "{error}");
    }

    #[test]
    fn a_string_the_parser_must_hold_is_refused_past_its_limit_after_a_bounded_read() {
        for head in [
            r#"{""#,
            r#"{"resource_changes":[{"address":""#,
            r#"{"resource_changes":[{"change":{"actions":["create",""#,
            r#"{"resource_changes":[{"change":{""#,
        ] {
            let (error, given) = read_endless(Endless::new(head, "a\\\"é"));
            let refused = format!(
                "a key, address or action in the plan is longer than {} MiB at line 1 column",
                HELD_STRING_BYTES >> 20
            );
            assert!(error.starts_with(&refused), "{head}: {error}");
            assert!(
                given <= HELD_STRING_BYTES + 2 * CHUNK as u64,
                "{head}: read {given} bytes"
            );
        }
    }

    #[test]
    fn values_and_skipped_keys_longer_than_a_held_string_are_read_whole() {
        let long = "v".repeat(2 * HELD_STRING_BYTES as usize);
        let json = format!(
            r#"{{"planned_values":{{"{long}":"{long}"}},"resource_changes":[
            {{"address":"a","change":{{"actions":["no-op"],"before":"{long}","after":"{long}"}}}},
            {{"address":"b","change":{{"actions":["create"],"after":{{"v":"{long}"}}}}}}]}}"#
        );
        let summary = plan_summary_from(json.as_bytes()).unwrap();
        assert_eq!(summary.listed, ["b (create)"]);
        let shorter = json.replacen(&format!(r#"{{"v":"{long}"}}"#), r#"{"v":"v"}"#, 1);
        assert_ne!(
            plan_summary_from(shorter.as_bytes()).unwrap().digest,
            summary.digest
        );
    }

    /// (VmRSS, VmHWM) of this process, in KiB.
    fn memory() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|line| line.starts_with(name)).unwrap();
            line[name.len()..]
                .trim()
                .trim_end_matches(" kB")
                .parse()
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Set in the process [`one_resources_values_do_not_grow_what_the_summary_holds`]
    /// starts to read the plan, so that its peak memory is the reading's.
    const MEASURED: &str = "PIPELINES_TEST_SUMMARY_MEMORY";

    /// What reading one resource's 64 MiB of values may add to the peak memory: the
    /// summary's buffers and the code first run (a tree of those values took 3.3 GiB).
    const GREW_AT_MOST_KIB: u64 = 8 << 10;

    #[test]
    fn one_resources_values_do_not_grow_what_the_summary_holds() {
        const NAME: &str =
            "plan_summary::tests::one_resources_values_do_not_grow_what_the_summary_holds";
        if std::env::var_os(MEASURED).is_some() {
            // 64 MiB of values in one changed resource: a parsed tree of them would take
            // several times that.
            let mut endless = Endless::new(
                r#"{"resource_changes":[{"address":"a","change":{"actions":["update"],"after":[{}"#,
                r#",{"k":[1,"s",{}]}"#,
            );
            let (before, _) = memory();
            let error = plan_summary_from(&mut endless).unwrap_err();
            let (_, peak) = memory();
            // The plan is cut off inside the value: everything was read, then it ended.
            assert!(error.is_eof(), "{error}");
            assert_eq!(endless.given, endless.limit);
            let grew = peak.saturating_sub(before);
            println!("grew {grew} KiB");
            assert!(grew < GREW_AT_MOST_KIB, "grew {grew} KiB");
            return;
        }
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads", "1"])
            .env(MEASURED, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&child.stderr)
        );
        let grew: u64 = stdout
            .lines()
            .find_map(|line| Some(line.split_once("grew ")?.1))
            .and_then(|line| line.strip_suffix(" KiB"))
            .unwrap_or_else(|| panic!("no measure in {stdout}"))
            .parse()
            .unwrap();
        assert!(
            grew < GREW_AT_MOST_KIB,
            "reading 64 MiB of one resource's values grew the peak memory by {grew} KiB"
        );
    }
}

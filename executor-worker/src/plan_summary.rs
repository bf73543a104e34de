//! What `show -json` of a saved plan says, in short (the resource counts, the first resources
//! it changes, a digest of the changes), read as the JSON streams past.
//!
//! A plan of a big unit is hundreds of megabytes, and a pull request's plan can print any
//! amount (a Terragrunt hook writes to the same stdout). So nothing kept here grows with the
//! plan: each resource is read, counted, folded into the digest and dropped. The values of
//! a resource the plan leaves alone (`no-op`, most of a big plan) are skipped unparsed, and
//! only the first [`LISTED`] addresses are kept, each cut to [`KEPT_BYTES`]. What is held
//! whole while it is read is one resource's entry (its address, actions and planned values):
//! a plan can still make that one entry as big as it likes.

use std::collections::BinaryHeap;
use std::fmt;

use proto_types::{DriftFindings, ResourceCounts};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

/// How many changed resources a summary names: as many as a drift finding lists.
pub const LISTED: usize = DriftFindings::MAX_RESOURCES;

/// The longest address, or list of actions, a summary keeps (the digest reads them whole).
pub const KEPT_BYTES: usize = 1024;

/// `text` cut to [`KEPT_BYTES`] at a character boundary, marked when cut.
fn kept(text: &str) -> String {
    if text.len() <= KEPT_BYTES {
        return text.to_owned();
    }
    let mut end = KEPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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
pub fn plan_summary_from(json: impl std::io::Read) -> Result<PlanSummary, serde_json::Error> {
    let mut summary = Summarizer::default();
    let mut reader = serde_json::Deserializer::from_reader(json);
    PlanSeed(&mut summary).deserialize(&mut reader)?;
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
        let mut changes = false;
        for action in &change.actions {
            match action.as_str() {
                "create" => self.counts.add = self.counts.add.saturating_add(1),
                "update" => self.counts.change = self.counts.change.saturating_add(1),
                "delete" => self.counts.destroy = self.counts.destroy.saturating_add(1),
                _ => continue,
            }
            changes = true;
        }
        if !changes {
            return;
        }
        self.changed += 1;
        let actions = change.actions.join(",");
        // serde_json's maps are sorted, so the same values always print the same.
        let line = format!(
            "{}\t{}\t{}\t{}\n",
            change.address, actions, change.after, change.after_unknown
        );
        let hash = Sha256::digest(line.as_bytes());
        let mut carry = false;
        for (word, bytes) in self.sum.iter_mut().zip(hash.chunks_exact(8)) {
            let bytes: [u8; 8] = bytes.try_into().unwrap_or_default();
            let (once, first) = word.overflowing_add(u64::from_le_bytes(bytes));
            let (twice, second) = once.overflowing_add(u64::from(carry));
            *word = twice;
            carry = first || second;
        }
        self.first
            .push((kept(&change.address), kept(&change.actions.join(", "))));
        if self.first.len() > LISTED {
            self.first.pop();
        }
    }

    fn finish(self) -> PlanSummary {
        let mut digest = Sha256::new();
        digest.update(b"pipelines plan changes 2\n");
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
    actions: Vec<String>,
    /// `Null` when the plan leaves the resource alone: its values are not read.
    after: serde_json::Value,
    after_unknown: serde_json::Value,
}

/// The plan document: every key but `resource_changes` is skipped as it is read.
struct PlanSeed<'a>(&'a mut Summarizer);

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
                map.next_value_seed(ChangesSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `resource_changes`: each entry is summed in as soon as it is read.
struct ChangesSeed<'a>(&'a mut Summarizer);

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
        while let Some(change) = seq.next_element_seed(ResourceChangeSeed)? {
            self.0.add(change);
        }
        Ok(())
    }
}

/// One entry of `resource_changes`: `address` and `change`; the rest is skipped.
struct ResourceChangeSeed;

impl<'de> DeserializeSeed<'de> for ResourceChangeSeed {
    type Value = ResourceChange;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<ResourceChange, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResourceChangeSeed {
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
                "change" if change.is_none() => change = Some(map.next_value_seed(ChangeSeed)?),
                "address" | "change" => {
                    return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (actions, after, after_unknown) =
            change.ok_or_else(|| de::Error::missing_field("change"))?;
        Ok(ResourceChange {
            address: address.unwrap_or_default(),
            actions,
            after,
            after_unknown,
        })
    }
}

/// A resource's `change`: its `actions`, and its planned values when the actions change it.
/// Terraform writes `actions` first, so a no-op's values are skipped without being parsed;
/// values that come before the actions are parsed and dropped if they turn out not to matter.
struct ChangeSeed;

type Change = (Vec<String>, serde_json::Value, serde_json::Value);

impl<'de> DeserializeSeed<'de> for ChangeSeed {
    type Value = Change;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Change, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChangeSeed {
    type Value = Change;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a change with its actions")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Change, A::Error> {
        let mut actions: Option<Vec<String>> = None;
        let mut after = serde_json::Value::Null;
        let mut after_unknown = serde_json::Value::Null;
        let (mut seen_after, mut seen_unknown) = (false, false);
        while let Some(key) = map.next_key::<String>()? {
            let wanted = actions.as_deref().is_none_or(changes);
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
                "actions" => actions = Some(map.next_value()?),
                "after" if wanted => after = map.next_value()?,
                "after_unknown" if wanted => after_unknown = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let actions = actions.ok_or_else(|| de::Error::missing_field("actions"))?;
        if !changes(&actions) {
            after = serde_json::Value::Null;
            after_unknown = serde_json::Value::Null;
        }
        Ok((actions, after, after_unknown))
    }
}

/// Whether a resource's actions change it (a read or a no-op does not).
fn changes(actions: &[String]) -> bool {
    actions
        .iter()
        .any(|action| matches!(action.as_str(), "create" | "update" | "delete"))
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
    fn values_of_a_resource_the_plan_leaves_alone_are_not_parsed() {
        // A number beyond f64 cannot be parsed into a value; skipped unparsed, it is no error.
        let json = br#"{"resource_changes":[
            {"address":"a","change":{"actions":["no-op"],"after":{"n":1e999},"after_unknown":{}}},
            {"address":"b","change":{"actions":["create"],"after":{"n":1},"after_unknown":{}}}]}"#;
        let summary = plan_summary_from(&json[..]).unwrap();
        assert_eq!(summary.listed, ["b (create)"]);
        // The same number in a resource that changes is read, and fails.
        let changing = br#"{"resource_changes":[
            {"address":"a","change":{"actions":["update"],"after":{"n":1e999}}}]}"#;
        assert!(plan_summary_from(&changing[..]).is_err());
    }
}

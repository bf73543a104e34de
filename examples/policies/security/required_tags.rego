# Every AWS resource created or updated with tags carries an owner and a cost centre.
package main

required_tags := {"owner", "cost-center"}

writes := {"create", "update"}

# Resources without a `tags` attribute are not checked; `tags = null` counts as no tags.
tags(after) := after.tags if is_object(after.tags)

tags(after) := {} if after.tags == null

deny contains msg if {
	some change in input.resource_changes
	startswith(change.type, "aws_")
	some action in change.change.actions
	action in writes
	# Bound first: a comprehension over an undefined value would be an empty set.
	tagged := tags(change.change.after)
	present := {key | some key, _ in tagged}
	missing := required_tags - present
	count(missing) > 0
	msg := sprintf("%s: missing required tags %v", [change.address, sort(missing)])
}

# Advice for reviewers, never a failure: say when a plan replaces resources, and when it
# changes production.
package main

warn contains msg if {
	some change in input.resource_changes
	"delete" in change.change.actions
	"create" in change.change.actions
	msg := sprintf("%s will be replaced (destroyed, then created)", [change.address])
}

warn contains msg if {
	startswith(input.pipelines.account, "prod")
	changing := [change.address |
		some change in input.resource_changes
		change.change.actions != ["no-op"]
	]
	count(changing) > 0
	msg := sprintf("%s changes %d resource(s) of %s in account %s", [input.pipelines.action, count(changing), input.pipelines.unit, input.pipelines.account])
}

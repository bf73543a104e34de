# Stateful resources are never destroyed by a pipeline run, replacements included.
package main

protected_types := {
	"aws_db_instance",
	"aws_dynamodb_table",
	"aws_kms_key",
	"aws_rds_cluster",
	"aws_s3_bucket",
}

deny contains msg if {
	some change in input.resource_changes
	change.type in protected_types
	"delete" in change.change.actions
	msg := sprintf("%s: %s is protected and would be destroyed", [change.address, change.type])
}

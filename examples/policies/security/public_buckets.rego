# No S3 bucket may become public: neither through a canned ACL nor by switching off its
# public access block.
package main

public_acls := {"public-read", "public-read-write"}

public_access_settings := [
	"block_public_acls",
	"block_public_policy",
	"ignore_public_acls",
	"restrict_public_buckets",
]

deny contains msg if {
	some change in input.resource_changes
	change.type == "aws_s3_bucket_acl"
	change.change.after.acl in public_acls
	msg := sprintf("%s: the ACL %q makes the bucket public", [change.address, change.change.after.acl])
}

deny contains msg if {
	some change in input.resource_changes
	change.type == "aws_s3_bucket_public_access_block"
	some setting in public_access_settings
	change.change.after[setting] == false
	msg := sprintf("%s: %s must stay true", [change.address, setting])
}

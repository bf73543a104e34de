terraform {
  backend "local" {
    path = "@STATE_DIR@/dev/app.tfstate"
  }
}

data "terraform_remote_state" "database" {
  backend = "local"
  config = {
    path = "@STATE_DIR@/dev/database.tfstate"
  }
}

data "terraform_remote_state" "dns" {
  backend = "local"
  config = {
    path = "@STATE_DIR@/shared/dns.tfstate"
  }
}

output "url" {
  value = "https://app.dev.${data.terraform_remote_state.dns.outputs.zone} (database ${data.terraform_remote_state.database.outputs.endpoint})"
}

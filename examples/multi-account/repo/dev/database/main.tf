terraform {
  backend "local" {
    path = "@STATE_DIR@/dev/database.tfstate"
  }
}

data "terraform_remote_state" "network" {
  backend = "local"
  config = {
    path = "@STATE_DIR@/dev/network.tfstate"
  }
}

output "endpoint" {
  value = "postgres://${cidrhost(data.terraform_remote_state.network.outputs.cidr, 5)}:5432/dev"
}

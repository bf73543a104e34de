terraform {
  backend "local" {
    path = "@STATE_DIR@/prod/database.tfstate"
  }
}

data "terraform_remote_state" "network" {
  backend = "local"
  config = {
    path = "@STATE_DIR@/prod/network.tfstate"
  }
}

output "endpoint" {
  value = "postgres://${cidrhost(data.terraform_remote_state.network.outputs.cidr, 5)}:5432/prod"
}

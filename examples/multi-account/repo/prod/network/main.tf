terraform {
  backend "local" {
    path = "@STATE_DIR@/prod/network.tfstate"
  }
}

output "cidr" {
  value = "10.20.0.0/16"
}

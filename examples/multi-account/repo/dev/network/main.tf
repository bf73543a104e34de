terraform {
  backend "local" {
    path = "@STATE_DIR@/dev/network.tfstate"
  }
}

output "cidr" {
  value = "10.10.0.0/16"
}

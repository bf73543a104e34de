terraform {
  backend "local" {
    path = "@STATE_DIR@/shared/dns.tfstate"
  }
}

output "zone" {
  value = "example.internal"
}

dependencies = ["../database", "../../shared/dns"]

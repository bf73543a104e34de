dependencies = ["../network"]

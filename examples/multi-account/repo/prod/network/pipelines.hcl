dependencies = []

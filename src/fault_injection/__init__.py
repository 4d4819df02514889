"""Fault injection: scenarios, injectors (client, proxy, netem, processes) and their measures."""

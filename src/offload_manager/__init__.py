"""Decides where frames go and arbitrates their results."""

"""Running ltray on a Ray cluster: job submission through the head's job API."""

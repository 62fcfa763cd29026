"""The live view of the database nodes and router peers, and acting on it: topology,
monitor, heartbeats, followed primaries. Above backend/, below engine/."""

"""The CLI commands, one module each; mtpgraft.cli registers them on the group (common.py holds
what they share)."""

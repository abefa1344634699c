"""Contracts shared by every service. Pure pydantic: imports nothing of ours."""

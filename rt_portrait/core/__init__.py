"""Core: types and small utilities shared by every stage (the bottom of the stage order)."""

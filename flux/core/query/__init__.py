"""Queries: what a search asks and gets, and how filtered searches are planned."""

"""Cleaning raw web text: C4's rules and Gopher's, URL and line de-duplication, local and Ray engines."""

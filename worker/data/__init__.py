"""Offline data the stages read: word lists, places and geodata, lexicons, the feeling wheel."""

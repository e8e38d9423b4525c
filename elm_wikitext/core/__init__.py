"""The ground floor: definitions and services that every stage shares; it imports no stage."""

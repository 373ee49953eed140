"""Loopback fakes of the real providers (standard library only): each speaks
the documented wire format and checks what the plugins send it."""

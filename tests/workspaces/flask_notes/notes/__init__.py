"""The notes service: an application factory."""
from flask import Flask

from .models import db, Note, User  # re-exported for `from notes import User`
from .views import bp


def create_app(config=None):
    app = Flask(__name__)
    app.config['SECRET_KEY'] = 'notes-dev-secret-2024'
    app.config['SQLALCHEMY_DATABASE_URI'] = 'sqlite:///:memory:'
    if config:
        app.config.update(config)
    db.init_app(app)
    app.register_blueprint(bp)
    with app.app_context():
        db.create_all()
    return app
